/* The worker threads of qmatmul.c, for the other kernels of this library. */
#ifndef MLXD_POOL_H
#define MLXD_POOL_H

/* task(ctx, a, b) over pieces [a, b) of [0, n), at least min_chunk long, on up to
 * `threads` threads (the caller included); returns when all are done. */
void parallel_for(void (*task)(const void *, int, int), const void *ctx, int n, int min_chunk,
                  int threads);

/* A float buffer of at least n, 64-byte aligned, kept by the calling thread for its next
 * call (grown, never shrunk; NULL when out of memory): the kernels' work buffers, so a
 * prefill's many calls do not churn the allocator's per-thread arenas (a server's RSS then
 * swung by tens of MB between two idle moments). Each use site has its own. */
#include <stdlib.h>
#define THREAD_SCRATCH(name)                                                          \
    static float *name(size_t n) {                                                    \
        static __thread float *buf;                                                   \
        static __thread size_t cap;                                                   \
        if (n > cap) {                                                                \
            free(buf);                                                                \
            cap = 0;                                                                  \
            buf = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);              \
            if (buf == NULL) return NULL;                                             \
            cap = n;                                                                  \
        }                                                                             \
        return buf;                                                                   \
    }

#endif
