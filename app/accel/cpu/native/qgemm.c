/* Prefill matmuls against MLX-quantized weights: y [M, N] = x [M, K] @ W [N, K]^T for many
 * rows (a prefill chunk), W as qmatmul.c reads it (packed 4/8-bit, affine per group).
 *
 * Why not dequantize + OpenBLAS's sgemm: the sgemm is only as fast as the kernels
 * OpenBLAS runs, and a machine may pin those (OPENBLAS_CORETYPE, which mlxd never
 * overrides) below what the CPU can do; and the dequantized float32 weight is written to
 * memory and read back for every chunk. Here a tile of NR weight rows is dequantized into
 * a small buffer that stays in the core's cache, and multiplied into all M rows.
 *
 * The tile is transposed against a usual GEMM: vectors run over rows of x (16 a register),
 * and weights are broadcast. x is packed once per call into panels of MR rows, k-major
 * (xp[panel][k][MR], zero past M), so one k step loads MR consecutive floats; the
 * accumulators hold an NR x MR block of y^T (NR * MR / 16 = 28 registers of 32). Each
 * finished block is written to y through a scatter (a column of y per register).
 *
 * AVX-512 only: where the CPU has just AVX2, OpenBLAS's Haswell kernels are what this would
 * be, and qgemm_available() says 0 so callers keep dequantize + sgemm.
 */
#include <stdint.h>
#include <string.h>

#include "pool.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_QGEMM 1
#else
#define HAVE_QGEMM 0
#endif

#define MR 32 /* rows of x per panel: two registers */
#define NR 14 /* weight rows per tile */

void dequantize_rows(const uint32_t *w, const float *scales, const float *biases, int K,
                     int G, int bits, float *out, int n0, int n1);

int qgemm_available(void) { return HAVE_QGEMM; }

#if HAVE_QGEMM
THREAD_SCRATCH(tile_buffer)
THREAD_SCRATCH(panel_buffer)

typedef struct {
    const float *x; int M, K; float *xp;  /* packing */
    const uint32_t *w; const float *scales, *biases; int N, G, bits; float *y;
    int *failed;  /* set by a thread that could not get its tile buffer */
} qgemm_t;

/* Panels [p0, p1) of x into xp. */
static void pack_panels(const void *ctx, int p0, int p1) {
    const qgemm_t *t = ctx;
    const int K = t->K;
    for (int p = p0; p < p1; p++) {
        float *dst = t->xp + (int64_t)p * K * MR;
        const int m0 = p * MR, rows = t->M - m0 < MR ? t->M - m0 : MR;
        const float *src = t->x + (int64_t)m0 * K;
        if (rows < MR) memset(dst, 0, sizeof(float) * (size_t)K * MR);
        /* k outer: the MR source rows' current cache lines stay in L1 between k steps */
        for (int k = 0; k < K; k++)
            for (int r = 0; r < rows; r++) dst[(int64_t)k * MR + r] = src[(int64_t)r * K + k];
    }
}

/* y[m0 + i, n0 + j] += the block for panel `xp` and tile `wd` [NR, K]: all of K at once,
 * so the block never leaves the registers. */
static inline void block(const float *xp, const float *wd, int K, float *y, int N, int m0,
                         int rows, int n0, int cols) {
    __m512 acc[NR][2];
    for (int j = 0; j < NR; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        const __m512 x0 = _mm512_load_ps(xp + (int64_t)k * MR);
        const __m512 x1 = _mm512_load_ps(xp + (int64_t)k * MR + 16);
        for (int j = 0; j < NR; j++) {
            const __m512 w = _mm512_set1_ps(wd[(int64_t)j * K + k]);
            acc[j][0] = _mm512_fmadd_ps(w, x0, acc[j][0]);
            acc[j][1] = _mm512_fmadd_ps(w, x1, acc[j][1]);
        }
    }
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i stride = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(N));
    const __mmask16 m_lo = rows >= 16 ? 0xFFFF : (__mmask16)((1u << rows) - 1);
    const __mmask16 m_hi = rows >= 32 ? 0xFFFF : rows <= 16 ? 0 : (__mmask16)((1u << (rows - 16)) - 1);
    float *base = y + (int64_t)m0 * N + n0;
    for (int j = 0; j < cols; j++) {
        _mm512_mask_i32scatter_ps(base + j, m_lo, stride, acc[j][0], 4);
        if (m_hi) _mm512_mask_i32scatter_ps(base + (int64_t)16 * N + j, m_hi, stride, acc[j][1], 4);
    }
}

/* Weight tiles [t0, t1) (NR rows each) times every panel. */
static void tiles(const void *ctx, int t0, int t1) {
    const qgemm_t *t = ctx;
    const int K = t->K, panels = (t->M + MR - 1) / MR;
    float *wd = tile_buffer((size_t)NR * K);
    if (wd == NULL) {
        __atomic_store_n(t->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int tile = t0; tile < t1; tile++) {
        const int n0 = tile * NR, cols = t->N - n0 < NR ? t->N - n0 : NR;
        dequantize_rows(t->w, t->scales, t->biases, K, t->G, t->bits, wd - (int64_t)n0 * K,
                        n0, n0 + cols);
        if (cols < NR) memset(wd + (int64_t)cols * K, 0, sizeof(float) * (size_t)(NR - cols) * K);
        for (int p = 0; p < panels; p++) {
            const int m0 = p * MR, rows = t->M - m0 < MR ? t->M - m0 : MR;
            block(t->xp + (int64_t)p * K * MR, wd, K, t->y, t->N, m0, rows, n0, cols);
        }
    }
}
#endif

/* y [M, N] (row-major, written whole) = x [M, K] @ W^T for W [N, K] packed as qmatmul's
 * (K % 32 == 0, G a multiple of 32 dividing K, bits 4 or 8), over `threads` threads.
 * Returns 0, -1 for shapes it cannot take or without AVX-512, -2 when out of memory. */
int qgemm(const float *x, int M, int K, const uint32_t *w, const float *scales,
          const float *biases, int N, int G, int bits, float *y, int threads) {
#if HAVE_QGEMM
    if (M <= 0 || N <= 0 || K <= 0 || K % 32 || G % 32 || K % G || (bits != 4 && bits != 8))
        return -1;
    const int panels = (M + MR - 1) / MR;
    float *xp = panel_buffer((size_t)panels * K * MR);
    if (xp == NULL) return -2;
    int failed = 0;
    const qgemm_t t = {x, M, K, xp, w, scales, biases, N, G, bits, y, &failed};
    parallel_for(pack_panels, &t, panels, 1, threads);
    parallel_for(tiles, &t, (N + NR - 1) / NR, 1, threads);
    return failed ? -2 : 0;
#else
    (void)x; (void)M; (void)K; (void)w; (void)scales; (void)biases; (void)N; (void)G;
    (void)bits; (void)y; (void)threads;
    return -1;
#endif
}
