/* A causal prefill chunk's attention for one sequence, blockwise with an online softmax
 * (the scores never leave the core's registers and L1).
 *
 * Through MLX and numpy the same work was two sgemms per block of query rows with the
 * scores written out between them, an additive mask table, and numpy's passes for max,
 * exp, sum and scale; and a machine that pins OpenBLAS to older kernels slows the sgemms.
 *
 * Layout: q [H, L, d] (contiguous), keys/values Hkv heads `head_stride` floats apart, each
 * S rows of d (a slice of the KV cache's buffer, read in place); out [H, L, d]. Query row
 * i sits at position S - L + i and sees keys [0, S - L + i]. Query head h reads kv head
 * h / (H / Hkv).
 *
 * Work unit: ROWS consecutive query rows of one head against key blocks of KB keys.
 * Scores: the keys are packed transposed once per call (kt [Hkv][d][S rounded up to KB]),
 * so a block's KB scores of a row are two registers, built over d broadcast multiply-adds.
 * Then the running max and sum are updated, the block's probabilities kept in a small
 * buffer, and the output rows (held in registers 16 dimensions at a time) gain p * v.
 *
 * AVX-512 only (prefill_attention_available() says 0 otherwise; the caller keeps its own
 * path).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "pool.h"
#include "simd.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_PREFILL_ATTENTION 1
#else
#define HAVE_PREFILL_ATTENTION 0
#endif

#define ROWS 6
#define KB 32
#define MAX_D 256

int prefill_attention_available(void) { return HAVE_PREFILL_ATTENTION; }

#if HAVE_PREFILL_ATTENTION
THREAD_SCRATCH(key_panel)

typedef struct {
    const float *q; int H, L, d; const float *keys, *values; int64_t head_stride;
    int Hkv, S, S_pad; float scale; float *out, *kt;
} prefill_t;

/* kv heads [a, b): kt[h][c][j] = keys[h][j][c], zero for j >= S. */
static void pack_keys(const void *ctx, int a, int b) {
    const prefill_t *t = ctx;
    for (int h = a; h < b; h++) {
        const float *k = t->keys + (int64_t)h * t->head_stride;
        float *dst = t->kt + (int64_t)h * t->d * t->S_pad;
        for (int c = 0; c < t->d; c++) {
            float *row = dst + (int64_t)c * t->S_pad;
            for (int j = 0; j < t->S; j++) row[j] = k[(int64_t)j * t->d + c];
            for (int j = t->S; j < t->S_pad; j++) row[j] = 0.0f;
        }
    }
}

/* Units [u0, u1): unit u is row block u % blocks of head u / blocks. */
static void attend_rows(const void *ctx, int u0, int u1) {
    const prefill_t *t = ctx;
    const int d = t->d, blocks = (t->L + ROWS - 1) / ROWS, rep = t->H / t->Hkv;
    float p[ROWS][KB] __attribute__((aligned(64)));
    float o[ROWS][MAX_D] __attribute__((aligned(64)));
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int u = u0; u < u1; u++) {
        const int h = u / blocks, i0 = (u % blocks) * ROWS;
        const int rows = t->L - i0 < ROWS ? t->L - i0 : ROWS;
        const float *kt = t->kt + (int64_t)(h / rep) * d * t->S_pad;
        const float *v = t->values + (int64_t)(h / rep) * t->head_stride;
        const float *q[ROWS];
        int lim[ROWS];  /* each row's last visible key */
        float m[ROWS], l[ROWS];
        for (int r = 0; r < ROWS; r++) {
            const int rr = r < rows ? r : 0;  /* rows past the end repeat the first, unused */
            q[r] = t->q + ((int64_t)h * t->L + i0 + rr) * d;
            lim[r] = t->S - t->L + i0 + rr;
            m[r] = -INFINITY;
            l[r] = 0.0f;
            memset(o[r], 0, sizeof(float) * (size_t)d);
        }
        const int last = lim[rows - 1];
        for (int j0 = 0; j0 <= last; j0 += KB) {
            __m512 s[ROWS][2];
            for (int r = 0; r < ROWS; r++) s[r][0] = s[r][1] = _mm512_setzero_ps();
            for (int c = 0; c < d; c++) {
                const __m512 k0 = _mm512_load_ps(kt + (int64_t)c * t->S_pad + j0);
                const __m512 k1 = _mm512_load_ps(kt + (int64_t)c * t->S_pad + j0 + 16);
                for (int r = 0; r < ROWS; r++) {
                    const __m512 qc = _mm512_set1_ps(q[r][c]);
                    s[r][0] = _mm512_fmadd_ps(qc, k0, s[r][0]);
                    s[r][1] = _mm512_fmadd_ps(qc, k1, s[r][1]);
                }
            }
            const __m512 scale = _mm512_set1_ps(t->scale);
            for (int r = 0; r < ROWS; r++) {
                /* lanes at or before the row's last visible key */
                const __m512i lim_v = _mm512_set1_epi32(lim[r] - j0);
                const __mmask16 v0 = _mm512_cmple_epi32_mask(lane, lim_v);
                const __mmask16 v1 = _mm512_cmple_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(16)), lim_v);
                const __m512 a = _mm512_mask_blend_ps(v0, _mm512_set1_ps(-INFINITY), _mm512_mul_ps(s[r][0], scale));
                const __m512 b = _mm512_mask_blend_ps(v1, _mm512_set1_ps(-INFINITY), _mm512_mul_ps(s[r][1], scale));
                const float top = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
                const float m_new = top > m[r] ? top : m[r];
                const float corr = m[r] == -INFINITY ? 0.0f : expf(m[r] - m_new);
                const __m512 mv = _mm512_set1_ps(m_new);
                const __m512 pa = _mm512_maskz_mov_ps(v0, exp512(_mm512_sub_ps(a, mv)));
                const __m512 pb = _mm512_maskz_mov_ps(v1, exp512(_mm512_sub_ps(b, mv)));
                _mm512_store_ps(p[r], pa);
                _mm512_store_ps(p[r] + 16, pb);
                l[r] = l[r] * corr + _mm512_reduce_add_ps(_mm512_add_ps(pa, pb));
                m[r] = m_new;
                if (corr != 1.0f) {
                    const __m512 cv = _mm512_set1_ps(corr);
                    for (int c = 0; c < d; c += 16)
                        _mm512_store_ps(o[r] + c, _mm512_mul_ps(_mm512_load_ps(o[r] + c), cv));
                }
            }
            const int keys = t->S - j0 < KB ? t->S - j0 : KB;  /* v has no padding rows */
            for (int c = 0; c < d; c += 16) {
                __m512 acc[ROWS];
                for (int r = 0; r < ROWS; r++) acc[r] = _mm512_load_ps(o[r] + c);
                for (int j = 0; j < keys; j++) {
                    const __m512 vj = _mm512_loadu_ps(v + (int64_t)(j0 + j) * d + c);
                    for (int r = 0; r < ROWS; r++)
                        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[r][j]), vj, acc[r]);
                }
                for (int r = 0; r < ROWS; r++) _mm512_store_ps(o[r] + c, acc[r]);
            }
        }
        for (int r = 0; r < rows; r++) {
            float *dst = t->out + ((int64_t)h * t->L + i0 + r) * d;
            const __m512 inv = _mm512_set1_ps(1.0f / l[r]);
            for (int c = 0; c < d; c += 16)
                _mm512_storeu_ps(dst + c, _mm512_mul_ps(_mm512_load_ps(o[r] + c), inv));
        }
    }
}
#endif

/* out = causal softmax(q k^T * scale) v, shapes as above. d a multiple of 16, at most
 * MAX_D; L <= S. Returns 0, -1 for what it cannot take (or without AVX-512), -2 when out
 * of memory. */
int prefill_attend(const float *q, int H, int L, int d, const float *keys,
                   const float *values, int64_t head_stride, int Hkv, int S, float scale,
                   float *out, int threads) {
#if HAVE_PREFILL_ATTENTION
    if (H <= 0 || Hkv <= 0 || H % Hkv || d <= 0 || d % 16 || d > MAX_D || L <= 0 || L > S)
        return -1;
    const int S_pad = (S + KB - 1) / KB * KB;
    float *kt = key_panel((size_t)Hkv * d * S_pad);
    if (kt == NULL) return -2;
    const prefill_t t = {q, H, L, d, keys, values, head_stride, Hkv, S, S_pad, scale, out, kt};
    parallel_for(pack_keys, &t, Hkv, 1, threads);
    parallel_for(attend_rows, &t, H * ((L + ROWS - 1) / ROWS), 1, threads);
    return 0;
#else
    (void)q; (void)H; (void)L; (void)d; (void)keys; (void)values; (void)head_stride;
    (void)Hkv; (void)S; (void)scale; (void)out; (void)threads;
    return -1;
#endif
}
