/* The kernels of this library that other files of it call (step.c strings them together). */
#ifndef MLXD_KERNELS_H
#define MLXD_KERNELS_H

#include <stdint.h>

/* qmatmul.c */
int qmatmul_parts(const float *x, int rows, int K, int parts, const uint32_t *const *ws,
                  const float *const *ss, const float *const *bs, const int *starts, int G,
                  int bits, float *y, int threads);

/* qgemm.c */
int qgemm(const float *x, int M, int K, const uint32_t *w, const float *scales,
          const float *biases, int N, int G, int bits, float *y, int threads);

/* prefill_attention.c */
int prefill_attend(const float *q, int H, int L, int d, const float *keys,
                   const float *values, int64_t head_stride, int Hkv, int S, float scale,
                   float *out, int threads);

/* decode.c */
int attend_mt(const float *q, int B, int H, int Hkv, int d, const float *keys,
              const float *values, int64_t cap, const int32_t *start, int end, float scale,
              float *out, float *scratch, int threads);
void rms_norm(const float *x, int rows, int n, const float *w, float eps, float *out);
void swiglu(const float *gu, int rows, int I, float *out);
void rope_store(const float *qkv, int B, int H, int Hkv, int d, const float *cos,
                const float *sin, float *q, float *keys, float *values, int64_t cap, int pos);

#endif
