/* The worker threads of qmatmul.c, for the other kernels of this library. */
#ifndef MLXD_POOL_H
#define MLXD_POOL_H

/* task(ctx, a, b) over pieces [a, b) of [0, n), at least min_chunk long, on up to
 * `threads` threads (the caller included); returns when all are done. */
void parallel_for(void (*task)(const void *, int, int), const void *ctx, int n, int min_chunk,
                  int threads);

#endif
