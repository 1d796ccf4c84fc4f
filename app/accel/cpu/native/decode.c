/* The attention of a decode step: one new query per row against a layer's cached keys and
 * values, in the layout of mlx-lm's BatchKVCache ([B, Hkv, capacity, d], rows left-padded).
 *
 * Through numpy this was a handful of batched matmuls over strided views plus a softmax
 * and a mask, each a pass over [B, H, positions] scores with its own temporaries; at 8
 * rows it took as long as all of the step's weight matmuls. Here each query head is one
 * pass over its keys and one over its values, padding skipped rather than masked, the
 * heads shared over the kernel threads (pool.h).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "pool.h"
#include "simd.h"

#define SILU_PIECE 256 /* floats: the unit silu_mul_mt shares out */

typedef struct {
    const float *q; int H, Hkv, d; const float *keys, *values; int64_t cap;
    const int32_t *start; int end; float scale; float *out, *scratch;
} attend_t;


static inline float dot(const float *a, const float *b, int d) {
    int j = 0;
    float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; j + 16 <= d; j += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), acc1);
    }
    sum = hsum8(_mm256_add_ps(acc0, acc1));
#endif
    for (; j < d; j++) sum += a[j] * b[j];
    return sum;
}


/* p[s] = exp(p[s] - top) for s in [first, end); returns their sum. */
static float exp_shifted(float *p, int first, int end, float top) {
    int s = first;
    float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps();
    const __m256 t = _mm256_set1_ps(top);
    for (; s + 8 <= end; s += 8) {
        const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(p + s), t));
        _mm256_storeu_ps(p + s, e);
        acc = _mm256_add_ps(acc, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (int i = 0; i < 8; i++) sum += lanes[i];
#endif
    for (; s < end; s++) sum += (p[s] = expf(p[s] - top));
    return sum;
}

/* p[s] = q . k[s] * scale for s in [first, end); four keys at a time where d % 8 == 0
 * (AVX-512: eight, d % 16 == 0; more keys at once, more independent multiply-add chains:
 * with four each chain's latency was the limit). */
static void scores(const float *q, const float *k, int d, int first, int end, float scale,
                   float *p) {
    int s = first;
#if defined(__AVX512F__)
    if (d % 16 == 0) {
        for (; s + 8 <= end; s += 8) {
            const float *k0 = k + (int64_t)s * d;
            __m512 a[8];
            for (int i = 0; i < 8; i++) a[i] = _mm512_setzero_ps();
            for (int j = 0; j < d; j += 16) {
                const __m512 qj = _mm512_loadu_ps(q + j);
                for (int i = 0; i < 8; i++)
                    a[i] = _mm512_fmadd_ps(qj, _mm512_loadu_ps(k0 + (int64_t)i * d + j), a[i]);
            }
            __m256 h[8];  /* each key's 16 lanes folded to 8 */
            for (int i = 0; i < 8; i++)
                h[i] = _mm256_add_ps(_mm512_castps512_ps256(a[i]), _mm512_extractf32x8_ps(a[i], 1));
            const __m256 lo = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
            const __m256 hi = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
            /* lo: keys 0-3 from the low and from the high 128-bit halves; hi: keys 4-7 */
            const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20),
                                             _mm256_permute2f128_ps(lo, hi, 0x31));
            _mm256_storeu_ps(p + s, _mm256_mul_ps(sum, _mm256_set1_ps(scale)));
        }
    }
#endif
#if defined(__AVX2__) && defined(__FMA__)
    if (d % 8 == 0) {
        for (; s + 4 <= end; s += 4) {
            const float *k0 = k + (int64_t)s * d;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int j = 0; j < d; j += 8) {
                const __m256 qj = _mm256_loadu_ps(q + j);
                a0 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(k0 + j), a0);
                a1 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(k0 + d + j), a1);
                a2 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(k0 + 2 * d + j), a2);
                a3 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(k0 + 3 * d + j), a3);
            }
            /* the four sums in one: pairs, then halves */
            const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            const __m128 four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _mm_storeu_ps(p + s, _mm_mul_ps(four, _mm_set1_ps(scale)));
        }
    }
#endif
    for (; s < end; s++) p[s] = dot(q, k + (int64_t)s * d, d) * scale;
}

/* o = sum over s in [first, end) of p[s] * inv * v[s] (o apart from p and v). */
static void weighted_sum(const float *p, float inv, const float *v, int d, int first, int end,
                         float *restrict o) {
    int j0 = 0;
#if defined(__AVX512F__)
    /* 64 outputs in registers, keys alternating between two sets of accumulators (one
     * set waited on its own multiply-adds' latency at every key) */
    for (; j0 + 64 <= d; j0 += 64) {
        __m512 a[2][4];
        for (int i = 0; i < 4; i++) a[0][i] = a[1][i] = _mm512_setzero_ps();
        int s = first;
        for (; s + 2 <= end; s += 2) {
            const __m512 w0 = _mm512_set1_ps(p[s] * inv), w1 = _mm512_set1_ps(p[s + 1] * inv);
            const float *v0 = v + (int64_t)s * d + j0, *v1 = v0 + d;
            for (int i = 0; i < 4; i++) {
                a[0][i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(v0 + 16 * i), a[0][i]);
                a[1][i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(v1 + 16 * i), a[1][i]);
            }
        }
        if (s < end) {
            const __m512 w0 = _mm512_set1_ps(p[s] * inv);
            const float *v0 = v + (int64_t)s * d + j0;
            for (int i = 0; i < 4; i++)
                a[0][i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(v0 + 16 * i), a[0][i]);
        }
        for (int i = 0; i < 4; i++) _mm512_storeu_ps(o + j0 + 16 * i, _mm512_add_ps(a[0][i], a[1][i]));
    }
#endif
#if defined(__AVX2__) && defined(__FMA__)
    for (; j0 + 32 <= d; j0 += 32) {  /* 32 outputs in registers over all positions */
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int s = first; s < end; s++) {
            const __m256 w = _mm256_set1_ps(p[s] * inv);
            const float *vs = v + (int64_t)s * d + j0;
            a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs), a0);
            a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 8), a1);
            a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 16), a2);
            a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 24), a3);
        }
        _mm256_storeu_ps(o + j0, a0);
        _mm256_storeu_ps(o + j0 + 8, a1);
        _mm256_storeu_ps(o + j0 + 16, a2);
        _mm256_storeu_ps(o + j0 + 24, a3);
    }
#endif
    for (int j = j0; j < d; j++) o[j] = 0.0f;
    for (int s = first; s < end; s++) {
        const float w = p[s] * inv;
        for (int j = j0; j < d; j++) o[j] += w * v[(int64_t)s * d + j];
    }
}

/* Query heads [u0, u1) of the B * H, head u = b * H + h. */
static void attend_heads(const void *ctx, int u0, int u1) {
    const attend_t *t = ctx;
    const int d = t->d, rep = t->H / t->Hkv;
    for (int u = u0; u < u1; u++) {
        const int b = u / t->H, h = u % t->H;
        const int64_t kv = ((int64_t)b * t->Hkv + h / rep) * t->cap * d;
        const float *q = t->q + (int64_t)u * d, *k = t->keys + kv, *v = t->values + kv;
        float *p = t->scratch + (int64_t)u * t->end, *o = t->out + (int64_t)u * d;
        const int first = t->start[b] > 0 ? t->start[b] : 0;
        float top = -INFINITY;
        scores(q, k, d, first, t->end, t->scale, p);
        for (int s = first; s < t->end; s++)
            if (p[s] > top) top = p[s];
        const float inv = 1.0f / exp_shifted(p, first, t->end, top);
        weighted_sum(p, inv, v, d, first, t->end, o);
    }
}

/* out [B, H, d] = softmax(q k^T * scale) v for q [B, H, d], keys/values [B, Hkv, cap, d]:
 * row b attends to positions [start[b], end) (end <= cap), query head h to kv head
 * h / (H / Hkv). scratch: B * H * end floats. Returns -1 for shapes it cannot take. */
int attend_mt(const float *q, int B, int H, int Hkv, int d, const float *keys,
              const float *values, int64_t cap, const int32_t *start, int end, float scale,
              float *out, float *scratch, int threads) {
    if (B <= 0 || Hkv <= 0 || H % Hkv || d <= 0 || end <= 0 || end > cap) return -1;
    for (int b = 0; b < B; b++)
        if (start[b] >= end) return -1;  /* nothing to attend to */
    const attend_t t = {q, H, Hkv, d, keys, values, cap, start, end, scale, out, scratch};
    parallel_for(attend_heads, &t, B * H, 1, threads);
    return 0;
}

/* out = x / sqrt(mean(x^2) + eps) * w, row by row: x, out [rows, n]. */
void rms_norm(const float *x, int rows, int n, const float *w, float eps, float *out) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * n;
        float *o = out + (int64_t)r * n;
        const float inv = 1.0f / sqrtf(dot(xr, xr, n) / (float)n + eps);
        for (int j = 0; j < n; j++) o[j] = xr[j] * inv * w[j];
    }
}

/* out[r, j] = silu(gu[r, j]) * gu[r, I + j] for gu [rows, 2I] (gate | up), out [rows, I]. */
void swiglu(const float *gu, int rows, int I, float *out) {
    for (int r = 0; r < rows; r++) {
        const float *g = gu + (int64_t)r * 2 * I, *u = g + I;
        float *o = out + (int64_t)r * I;
        int j = 0;
#if defined(__AVX2__) && defined(__FMA__)
        const __m256 one = _mm256_set1_ps(1.0f);
        for (; j + 8 <= I; j += 8) {
            const __m256 gj = _mm256_loadu_ps(g + j);
            const __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), gj));
            _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_div_ps(gj, _mm256_add_ps(one, e)),
                                                  _mm256_loadu_ps(u + j)));
        }
#endif
        for (; j < I; j++) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}

/* out[i] = silu(g[i]) * u[i] for i in [a, b) of the arrays in ctx (a prefill's SwiGLU,
 * where gate and up are separate matmul outputs). */
typedef struct { const float *g, *u; float *out; int64_t n; } silu_mul_t;

static void silu_mul_range(const void *ctx, int a, int b) {
    const silu_mul_t *t = ctx;
    const int64_t lo = (int64_t)a * SILU_PIECE;
    const int64_t hi = (int64_t)b * SILU_PIECE < t->n ? (int64_t)b * SILU_PIECE : t->n;
    int64_t i = lo;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= hi; i += 8) {
        const __m256 gi = _mm256_loadu_ps(t->g + i);
        const __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), gi));
        _mm256_storeu_ps(t->out + i, _mm256_mul_ps(_mm256_div_ps(gi, _mm256_add_ps(one, e)),
                                                   _mm256_loadu_ps(t->u + i)));
    }
#endif
    for (; i < hi; i++) t->out[i] = t->g[i] / (1.0f + expf(-t->g[i])) * t->u[i];
}

/* out = silu(g) * u over n floats, on `threads` threads. */
void silu_mul_mt(const float *g, const float *u, int64_t n, float *out, int threads) {
    const silu_mul_t t = {g, u, out, n};
    parallel_for(silu_mul_range, &t, (int)((n + SILU_PIECE - 1) / SILU_PIECE), 4, threads);
}

/* The q | k | v output of a row's projection rotated (RoPE, half-split pairs, as mlx's
 * RoPE with traditional=False) and put in place: q heads into q [B, H, d], the k head and
 * the v head into position `pos` of keys / values [B, Hkv, cap, d]. qkv [B, (H+2Hkv)d];
 * cos, sin [B, d/2]. */
void rope_store(const float *qkv, int B, int H, int Hkv, int d, const float *cos,
                const float *sin, float *q, float *keys, float *values, int64_t cap, int pos) {
    const int half = d / 2;
    for (int b = 0; b < B; b++) {
        const float *row = qkv + (int64_t)b * (H + 2 * Hkv) * d;
        const float *c = cos + (int64_t)b * half, *s = sin + (int64_t)b * half;
        for (int h = 0; h < H + Hkv; h++) {
            const float *x = row + (int64_t)h * d;
            float *o = h < H ? q + ((int64_t)b * H + h) * d
                             : keys + (((int64_t)b * Hkv + h - H) * cap + pos) * d;
            for (int j = 0; j < half; j++) {
                const float x1 = x[j], x2 = x[half + j];
                o[j] = x1 * c[j] - x2 * s[j];
                o[half + j] = x2 * c[j] + x1 * s[j];
            }
        }
        for (int h = 0; h < Hkv; h++)
            memcpy(values + (((int64_t)b * Hkv + h) * cap + pos) * d,
                   row + (int64_t)(H + Hkv + h) * d, sizeof(float) * d);
    }
}
