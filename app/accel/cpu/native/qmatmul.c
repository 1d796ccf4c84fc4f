/* Few-row matmuls against MLX-quantized weights, read as they lie in memory.
 *
 * MLX's affine quantization (mx.quantize; a GGUF's Q4_0/Q4_1/Q8_0 load into it exactly)
 * stores a weight [N, K] as packed uint32 words, row by row, element i of a word in bits
 * [bits*i, bits*(i+1)), and one float scale and bias per group of G inputs:
 * w[n, k] = scale[n, k/G] * q[n, k] + bias[n, k/G].
 *
 * y[r, n] = sum_k x[r, k] * w[n, k] for n in [n0, n1): each weight group is unpacked
 * and dequantized into registers once and multiplied into up to ROW_TILE rows of x, so a
 * decode step reads the packed bytes (a quarter or an eighth of float32's) once.
 *
 * 4-bit: a byte holds elements 2j (low nibble) and 2j+1 (high nibble). The caller passes x
 * with each 32-element chunk reordered as its 16 even elements then its 16 odd ones, so the
 * unpacked low and high nibbles meet their inputs with plain vector loads. 8-bit: x in order.
 *
 * Built at first use with the machine's own flags (-march=native) by native.py; the AVX-512
 * and AVX2 paths are chosen by the compiler's macros, with a scalar one for anything else.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "simd.h"

#define ROW_TILE 8
#define CHUNK 32
static int prefetch_rows = 8;  /* how far ahead prefetch_row asks: 2 to 16 measured alike */

int qmatmul_isa(void) {
#if defined(__AVX512F__)
    return 512;
#elif defined(__AVX2__) && defined(__FMA__)
    return 256;
#else
    return 0;
#endif
}

/* Ask for output row n + prefetch_rows's weight bytes, scales and biases while row n is
 * multiplied. A decode step streams every weight from memory once, and the cores' own
 * prefetchers, which stop at each 4 KiB page, left the few-row kernel waiting on memory
 * for most of a step: the same matmuls ran in well under half the time with their weights
 * in cache (bench/results/micro-cpu-prefetch.md measures the step with and without).
 * Prefetches never fault, so running past the weight's end is harmless. */
static inline __attribute__((always_inline)) void
prefetch_row(const uint8_t *wn, int row_bytes, const float *sn, const float *bn, int groups) {
    const int ahead = prefetch_rows;
    if (ahead == 0) return;
    const char *w = (const char *)(wn + (int64_t)ahead * row_bytes);
    for (int off = 0; off < row_bytes; off += 64) __builtin_prefetch(w + off, 0, 3);
    const char *s = (const char *)(sn + (int64_t)ahead * groups);
    const char *b = (const char *)(bn + (int64_t)ahead * groups);
    for (int off = 0; off < groups * (int)sizeof(float); off += 64) {
        __builtin_prefetch(s + off, 0, 3);
        __builtin_prefetch(b + off, 0, 3);
    }
}

/* Set how many rows ahead the kernels prefetch (0: off, for the benchmark that measures
 * it); a negative value leaves it. Returns the setting before the call. */
int qmatmul_prefetch(int rows) {
    const int before = prefetch_rows;
    if (rows >= 0) prefetch_rows = rows;
    return before;
}

/* Rows [0, rows) of one tile, rows <= ROW_TILE; x rows are K floats apart, y rows ldy.
 * Always inlined into `tile_any`, which calls it with constant rows and bits: the row
 * loops unroll and the accumulators stay in registers (with a run-time row count they
 * lived on the stack, a store and a load around every multiply-add). Two accumulators a
 * row break the chain of dependent multiply-adds that a single row would wait on. */
static inline __attribute__((always_inline)) void
tile(const float *x, const int rows, int K, const uint8_t *w, const float *scales,
     const float *biases, int G, const int bits, float *y, int ldy, int n0, int n1) {
    const int row_bytes = K * bits / 8;
    const int groups = K / G;
    for (int n = n0; n < n1; n++) {
        const uint8_t *wn = w + (int64_t)n * row_bytes;
        const float *sn = scales + (int64_t)n * groups;
        const float *bn = biases + (int64_t)n * groups;
#if defined(__AVX512F__)
        prefetch_row(wn, row_bytes, sn, bn, groups);
        __m512 acc[ROW_TILE], acc2[ROW_TILE];
        for (int r = 0; r < rows; r++) acc[r] = acc2[r] = _mm512_setzero_ps();
        /* the group index counted, not divided: a division per chunk (k / G, G known
         * only at run time) held the loop back */
        for (int k = 0, g = 0, next = G; k < K; k += CHUNK) {
            if (k == next) { g++; next += G; }
            const __m512 s = _mm512_set1_ps(sn[g]);
            const __m512 b = _mm512_set1_ps(bn[g]);
            __m512 wa, wb;
            if (bits == 4) {
                const __m512i e = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wn + k / 2)));
                const __m512i lo = _mm512_and_si512(e, _mm512_set1_epi32(0xF));
                const __m512i hi = _mm512_srli_epi32(e, 4);
                wa = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), s, b);
                wb = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), s, b);
            } else {
                const __m512i e0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wn + k)));
                const __m512i e1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wn + k + 16)));
                wa = _mm512_fmadd_ps(_mm512_cvtepi32_ps(e0), s, b);
                wb = _mm512_fmadd_ps(_mm512_cvtepi32_ps(e1), s, b);
            }
            for (int r = 0; r < rows; r++) {
                const float *xr = x + (int64_t)r * K + k;
                acc[r] = _mm512_fmadd_ps(wa, _mm512_loadu_ps(xr), acc[r]);
                acc2[r] = _mm512_fmadd_ps(wb, _mm512_loadu_ps(xr + 16), acc2[r]);
            }
        }
        for (int r = 0; r < rows; r++)
            y[(int64_t)r * ldy + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], acc2[r]));
#elif defined(__AVX2__) && defined(__FMA__)
        prefetch_row(wn, row_bytes, sn, bn, groups);
        /* A accumulators a row: few rows alone cannot hide a multiply-add's latency */
        enum { A_MAX = 4 };
        const int A = rows == 1 ? 4 : rows <= 4 ? 2 : 1;
        __m256 acc[ROW_TILE][A_MAX];
        for (int r = 0; r < rows; r++)
            for (int a = 0; a < A; a++) acc[r][a] = _mm256_setzero_ps();
        /* the group index counted, not divided: a division per chunk (k / G, G known
         * only at run time) held the loop back */
        for (int k = 0, g = 0, next = G; k < K; k += CHUNK) {
            if (k == next) { g++; next += G; }
            const __m256 s = _mm256_set1_ps(sn[g]);
            const __m256 b = _mm256_set1_ps(bn[g]);
            __m256 wv[4];  /* the chunk's 32 weights in x's order, 8 at a time */
            if (bits == 4) {
                for (int h = 0; h < 2; h++) {  /* bytes 8h..8h+7: evens 8h.., odds 16+8h.. */
                    const __m256i e = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wn + k / 2 + 8 * h)));
                    const __m256i lo = _mm256_and_si256(e, _mm256_set1_epi32(0xF));
                    const __m256i hi = _mm256_srli_epi32(e, 4);
                    wv[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), s, b);
                    wv[2 + h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), s, b);
                }
            } else {
                for (int h = 0; h < 4; h++) {
                    const __m256i e = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wn + k + 8 * h)));
                    wv[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(e), s, b);
                }
            }
            for (int r = 0; r < rows; r++) {
                const float *xr = x + (int64_t)r * K + k;
                for (int h = 0; h < 4; h++)
                    acc[r][h % A] = _mm256_fmadd_ps(wv[h], _mm256_loadu_ps(xr + 8 * h), acc[r][h % A]);
            }
        }
        for (int r = 0; r < rows; r++) {
            __m256 t = acc[r][0];
            for (int a = 1; a < A; a++) t = _mm256_add_ps(t, acc[r][a]);
            y[(int64_t)r * ldy + n] = hsum8(t);
        }
#else
        float acc[ROW_TILE];
        for (int r = 0; r < rows; r++) acc[r] = 0.0f;
        for (int k = 0, g = 0, next = G; k < K; k += CHUNK) {
            if (k == next) { g++; next += G; }
            const float s = sn[g], b = bn[g];
            float wv[CHUNK];
            for (int i = 0; i < 16; i++) {
                if (bits == 4) {
                    const uint8_t byte = wn[k / 2 + i];
                    wv[i] = (float)(byte & 0xF) * s + b;
                    wv[16 + i] = (float)(byte >> 4) * s + b;
                } else {
                    wv[i] = (float)wn[k + i] * s + b;
                    wv[16 + i] = (float)wn[k + 16 + i] * s + b;
                }
            }
            for (int r = 0; r < rows; r++) {
                const float *xr = x + (int64_t)r * K + k;
                for (int i = 0; i < CHUNK; i++) acc[r] += wv[i] * xr[i];
            }
        }
        for (int r = 0; r < rows; r++) y[(int64_t)r * ldy + n] = acc[r];
#endif
    }
}

#define TILE_CASE(R)                                                                     \
    case R:                                                                              \
        if (bits == 4) tile(x, R, K, w, scales, biases, G, 4, y, ldy, n0, n1);           \
        else tile(x, R, K, w, scales, biases, G, 8, y, ldy, n0, n1);                     \
        break;

static void tile_any(const float *x, int rows, int K, const uint8_t *w, const float *scales,
                     const float *biases, int G, int bits, float *y, int ldy, int n0,
                     int n1) {
    switch (rows) {
        TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4)
        TILE_CASE(5) TILE_CASE(6) TILE_CASE(7) TILE_CASE(8)
        default: break;
    }
}

/* The shapes every kernel here takes: K a multiple of 32, G a multiple of 32 dividing K,
 * bits 4 or 8, 0 <= n0 <= n1 <= ldy. */
static int checked(int K, int G, int bits, int n0, int n1, int ldy) {
    return !(K % CHUNK || G % CHUNK || K % G || (bits != 4 && bits != 8) || n0 < 0 || n0 > n1
             || n1 > ldy);
}

/* y[r * ldy + n] for r < rows, n in [n0, n1) of the weight's N rows: K a multiple of
 * 32, G a multiple of 32 dividing K, bits 4 or 8, ldy >= n1 (several weights can fill
 * one output side by side). Returns 0, or -1 for arguments it cannot take. */
int qmatmul(const float *x, int rows, int K, const uint32_t *w, const float *scales,
            const float *biases, int G, int bits, float *y, int ldy, int n0, int n1) {
    if (!checked(K, G, bits, n0, n1, ldy)) return -1;
    for (int r0 = 0; r0 < rows; r0 += ROW_TILE) {
        const int r = rows - r0 < ROW_TILE ? rows - r0 : ROW_TILE;
        tile_any(x + (int64_t)r0 * K, r, K, (const uint8_t *)w, scales, biases, G, bits,
                 y + (int64_t)r0 * ldy, ldy, n0, n1);
    }
    return 0;
}

/* ---- dequantize ------------------------------------------------------------------
 * Rows [n0, n1) of W as float32 into out[n * K + k] (a prefill's sgemm operand): the
 * compiler vectorizes the plain loop; one pass over the packed bytes, one write. */
void dequantize_rows(const uint32_t *w, const float *scales, const float *biases, int K,
                     int G, int bits, float *out, int n0, int n1) {
    const int row_bytes = K * bits / 8, groups = K / G;
    for (int n = n0; n < n1; n++) {
        const uint8_t *wn = (const uint8_t *)w + (int64_t)n * row_bytes;
        float *o = out + (int64_t)n * K;
        for (int g = 0; g < groups; g++) {
            const float s = scales[(int64_t)n * groups + g], b = biases[(int64_t)n * groups + g];
            if (bits == 4) {
                const uint8_t *src = wn + g * G / 2;
                float *dst = o + g * G;
                for (int i = 0; i < G / 2; i++) {
                    dst[2 * i] = (float)(src[i] & 0xF) * s + b;
                    dst[2 * i + 1] = (float)(src[i] >> 4) * s + b;
                }
            } else {
                const uint8_t *src = wn + g * G;
                float *dst = o + g * G;
                for (int i = 0; i < G; i++) dst[i] = (float)src[i] * s + b;
            }
        }
    }
}

/* ---- int8 activations (AVX-512 VNNI, or AVX2) -------------------------------------
 * As llama.cpp does on CPUs: x is quantized per block of 32 to int8 with one float scale
 * (absmax / 127), and each block's products with the unsigned 4- or 8-bit weights are
 * summed in integers, then scaled once per block:
 * sum_k w x = sum_blocks s_w dx sum(q xq) + sum_groups b_w sum(x). A fraction of the
 * float path's instructions per weight; the activations' rounding (at most half a step of
 * 1/127 of a block's largest value) is the price.
 *
 * AVX-512 VNNI: VPDPBUSD (64 multiply-adds an instruction into int32). Blocks go two at a
 * time (64 inputs, one 512-bit register of bytes). 4-bit: 32 bytes hold both blocks; their
 * low nibbles (even elements) then high nibbles (odd ones) fill the register, so xq is laid
 * out per 64 inputs as A evens, B evens, A odds, B odds. 8-bit: in order.
 *
 * AVX2 (no VNNI): VPMADDUBSW (unsigned x signed bytes, adjacent pairs summed into int16)
 * then VPMADDWD by ones into int32, a block of 32 a register. 4-bit: the block's 16 bytes
 * in both halves of a register, the upper half shifted by 4, give its evens then its odds
 * (xq per 32 inputs: evens, odds; the float path's order). 8-bit: an unsigned byte times
 * 127 twice overflows int16, so the weight is made signed (w - 128, its bias term gains
 * 128 s) and split into |w - 128| and the sign, which moves onto x (as llama.cpp's Q8 path).
 *
 * K must be a multiple of 64, G 32 or a multiple of 64 (the VNNI pairs; AVX2 keeps the
 * same shapes so one check serves both).
 */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define HAVE_VNNI 1
#else
#define HAVE_VNNI 0
#endif
#if !HAVE_VNNI && defined(__AVX2__) && defined(__FMA__)
#define HAVE_I8_AVX2 1
#else
#define HAVE_I8_AVX2 0
#endif
#define HAVE_I8 (HAVE_VNNI || HAVE_I8_AVX2)

/* 512: the VNNI kernel, 256: the AVX2 one, 0: none (qmatmul_i8 refuses). */
int qmatmul_int8(void) { return HAVE_VNNI ? 512 : HAVE_I8_AVX2 ? 256 : 0; }

/* xq [rows, K] int8 in the kernel's order, dx [rows, K/32], xg [rows, K/G] (sum of x per
 * weight group, for the bias term). */
void quantize_rows(const float *x, int rows, int K, int G, int bits, int8_t *xq, float *dx,
                   float *xg) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * K;
        int8_t *qr = xq + (int64_t)r * K;
        for (int g = 0; g < K / G; g++) xg[(int64_t)r * (K / G) + g] = 0.0f;
        for (int b = 0; b < K / 32; b++) {
            const float *xb = xr + 32 * b;
            float amax = 0.0f, sum = 0.0f;
            for (int i = 0; i < 32; i++) {
                const float a = xb[i] < 0 ? -xb[i] : xb[i];
                if (a > amax) amax = a;
            }
            const float d = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
            dx[(int64_t)r * (K / 32) + b] = d;
            const int pair = b & ~1, second = b & 1;  /* position within its 64 inputs */
            for (int i = 0; i < 32; i++) {
                const float v = xb[i] * inv;
                const int q = (int)(v + (v >= 0 ? 0.5f : -0.5f));
                sum += (float)q;
                int at;
                if (bits == 4 && HAVE_VNNI)  /* A evens, B evens, A odds, B odds */
                    at = 32 * pair + (i & 1) * 32 + second * 16 + (i >> 1);
                else if (bits == 4)  /* evens, odds */
                    at = 32 * b + (i & 1) * 16 + (i >> 1);
                else
                    at = 32 * b + i;
                qr[at] = (int8_t)q;
            }
            xg[(int64_t)r * (K / G) + (32 * b) / G] += sum * d;
        }
    }
}

#if HAVE_VNNI
static inline float dot_bias(const float *bn, const float *xg, int groups) {
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < groups; g += 16) {
        const __mmask16 m = groups - g >= 16 ? 0xFFFF : (__mmask16)((1u << (groups - g)) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, bn + g), _mm512_maskz_loadu_ps(m, xg + g), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static inline __attribute__((always_inline)) void
tile_i8(const int8_t *xq, const float *dx, const float *xg, const int rows, int K,
        const uint8_t *w, const float *scales, const float *biases, int G, const int bits,
        float *y, int ldy, int n0, int n1) {
    const int row_bytes = K * bits / 8, groups = K / G, blocks = K / 32;
    const __m512i idx = bits == 4
        ? _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0)
        : _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    for (int n = n0; n < n1; n++) {
        const uint8_t *wn = w + (int64_t)n * row_bytes;
        const float *sn = scales + (int64_t)n * groups;
        prefetch_row(wn, row_bytes, sn, biases + (int64_t)n * groups, groups);
        __m512 acc[ROW_TILE];
        for (int r = 0; r < rows; r++) acc[r] = _mm512_setzero_ps();
        for (int k = 0; k < K; k += 64) {
            __m512i w8;
            if (bits == 4) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(wn + k / 2));
                const __m256i lo = _mm256_and_si256(v, low4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                w8 = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            } else {
                w8 = _mm512_loadu_si512((const void *)(wn + k));
            }
            const __m128 sp = G == 32 ? _mm_castpd_ps(_mm_load_sd((const double *)(sn + k / 32)))
                                      : _mm_set1_ps(sn[k / G]);
            for (int r = 0; r < rows; r++) {
                const __m512i xv = _mm512_loadu_si512((const void *)(xq + (int64_t)r * K + k));
                const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w8, xv);
                const __m128 dp = _mm_castpd_ps(_mm_load_sd((const double *)(dx + (int64_t)r * blocks + k / 32)));
                const __m512 sd = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(sp, dp)));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sd, acc[r]);
            }
        }
        const float *bn = biases + (int64_t)n * groups;
        for (int r = 0; r < rows; r++)
            y[(int64_t)r * ldy + n] = _mm512_reduce_add_ps(acc[r])
                + dot_bias(bn, xg + (int64_t)r * groups, groups);
    }
}
#elif HAVE_I8_AVX2
/* sum_g (b[g] + shift * s[g]) xg[g]: the bias term (shift 128 for 8-bit's signed weights) */
static inline float dot_bias(const float *bn, const float *sn, float shift, const float *xg,
                             int groups) {
    __m256 acc = _mm256_setzero_ps();
    int g = 0;
    for (; g + 8 <= groups; g += 8) {
        const __m256 b = _mm256_fmadd_ps(_mm256_loadu_ps(sn + g), _mm256_set1_ps(shift),
                                         _mm256_loadu_ps(bn + g));
        acc = _mm256_fmadd_ps(b, _mm256_loadu_ps(xg + g), acc);
    }
    float sum = hsum8(acc);
    for (; g < groups; g++) sum += (bn[g] + shift * sn[g]) * xg[g];
    return sum;
}

static inline __attribute__((always_inline)) void
tile_i8(const int8_t *xq, const float *dx, const float *xg, const int rows, int K,
        const uint8_t *w, const float *scales, const float *biases, int G, const int bits,
        float *y, int ldy, int n0, int n1) {
    const int row_bytes = K * bits / 8, groups = K / G, blocks = K / 32;
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i upper_by_4 = _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0);
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    /* A accumulators a row: at one row, one chain of multiply-adds waits on itself */
    enum { A_MAX = 4 };
    const int A = rows == 1 ? 4 : rows <= 4 ? 2 : 1;
    for (int n = n0; n < n1; n++) {
        const uint8_t *wn = w + (int64_t)n * row_bytes;
        const float *sn = scales + (int64_t)n * groups;
        prefetch_row(wn, row_bytes, sn, biases + (int64_t)n * groups, groups);
        __m256 acc[ROW_TILE][A_MAX];
        for (int r = 0; r < rows; r++)
            for (int a = 0; a < A; a++) acc[r][a] = _mm256_setzero_ps();
        for (int b = 0, g = 0, next = G; b < blocks; b++) {
            const int k = 32 * b;
            if (k == next) { g++; next += G; }
            __m256i wu, ws = _mm256_setzero_si256();  /* unsigned weights; 8-bit: w - 128 */
            if (bits == 4) {
                const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(wn + k / 2)));
                wu = _mm256_and_si256(_mm256_srlv_epi32(v, upper_by_4), low4);
            } else {
                ws = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wn + k)), flip);
                wu = _mm256_abs_epi8(ws);
            }
            const __m256 s = _mm256_set1_ps(sn[g]);
            for (int r = 0; r < rows; r++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + (int64_t)r * K + k));
                if (bits == 8) xv = _mm256_sign_epi8(xv, ws);
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xv), ones);
                const __m256 sd = _mm256_mul_ps(s, _mm256_broadcast_ss(dx + (int64_t)r * blocks + b));
                acc[r][b % A] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sd, acc[r][b % A]);
            }
        }
        const float *bn = biases + (int64_t)n * groups;
        const float shift = bits == 8 ? 128.0f : 0.0f;
        for (int r = 0; r < rows; r++) {
            __m256 t = acc[r][0];
            for (int a = 1; a < A; a++) t = _mm256_add_ps(t, acc[r][a]);
            y[(int64_t)r * ldy + n] = hsum8(t)
                + dot_bias(bn, sn, shift, xg + (int64_t)r * groups, groups);
        }
    }
}
#endif

#if HAVE_I8
#define TILE_I8_CASE(R)                                                                  \
    case R:                                                                              \
        if (bits == 4) tile_i8(xq, dx, xg, R, K, w, scales, biases, G, 4, y, ldy, n0, n1); \
        else tile_i8(xq, dx, xg, R, K, w, scales, biases, G, 8, y, ldy, n0, n1);         \
        break;

static void tile_i8_any(const int8_t *xq, const float *dx, const float *xg, int rows, int K,
                        const uint8_t *w, const float *scales, const float *biases, int G,
                        int bits, float *y, int ldy, int n0, int n1) {
    switch (rows) {
        TILE_I8_CASE(1) TILE_I8_CASE(2) TILE_I8_CASE(3) TILE_I8_CASE(4)
        TILE_I8_CASE(5) TILE_I8_CASE(6) TILE_I8_CASE(7) TILE_I8_CASE(8)
        default: break;
    }
}
#endif

/* And the int8 kernel's: pairs of 32-input blocks, a group scale per pair or per block. */
static int i8_checked(int K, int G, int bits, int n0, int n1, int ldy) {
    return checked(K, G, bits, n0, n1, ldy) && K % 64 == 0 && (G == 32 || G % 64 == 0);
}

/* y[r * ldy + n], n in [n0, n1), from quantize_rows' xq/dx/xg. Returns -1 where no int8
 * kernel was built or the shapes do not fit (K % 64, G neither 32 nor a multiple of 64). */
int qmatmul_i8(const int8_t *xq, const float *dx, const float *xg, int rows, int K,
               const uint32_t *w, const float *scales, const float *biases, int G, int bits,
               float *y, int ldy, int n0, int n1) {
#if HAVE_I8
    if (!i8_checked(K, G, bits, n0, n1, ldy)) return -1;
    for (int r0 = 0; r0 < rows; r0 += ROW_TILE) {
        const int r = rows - r0 < ROW_TILE ? rows - r0 : ROW_TILE;
        tile_i8_any(xq + (int64_t)r0 * K, dx + (int64_t)r0 * (K / 32),
                    xg + (int64_t)r0 * (K / G), r, K, (const uint8_t *)w, scales, biases, G,
                    bits, y + (int64_t)r0 * ldy, ldy, n0, n1);
    }
    return 0;
#else
    (void)xq; (void)dx; (void)xg; (void)rows; (void)K; (void)w; (void)scales; (void)biases;
    (void)G; (void)bits; (void)y; (void)ldy; (void)n0; (void)n1;
    return -1;
#endif
}

/* ---- the same split over threads ---------------------------------------------------
 * A decode step makes ~150 matmul calls of 0.1-1 ms each: handing each to Python threads
 * costs about as much as it saves. These workers live for the process and spin briefly
 * (SPIN_CYCLES, as the OPENBLAS_THREAD_TIMEOUT mlxd sets; STEP_SPIN_CYCLES inside a decode
 * step, between qmatmul_step(1) and (0): longer than the numpy work between two calls,
 * which at 8 rows outlasted the short spin and paid a wake-up per call; outside a step the
 * long spin held a core that a prefill's sgemm wanted) before sleeping on a condition
 * variable, so back-to-back calls of one step cost no wake-up and an idle server no CPU.
 * A call is cut into small chunks of columns that the caller and the workers claim one at
 * a time: when another process holds a worker's core, the caller does its share instead
 * of waiting for it (it waits only for a chunk a worker has already claimed).
 * `ticket` holds the call's number (high 32 bits), its number of chunks (16 bits) and its
 * next chunk (low 16), so a worker that wakes late can never claim a chunk of a later call,
 * nor one past the end of its own: it reads the count from the ticket it claims with. (It
 * once read job.chunks instead: a worker holding the last ticket value of a finished call
 * could see the next call's larger count before that call's ticket was out, claim a chunk
 * "of the old call" and run the new job half set up, or finish after the caller had moved
 * on; a server under load crashed on it.)
 */
#include <pthread.h>
#include <stdatomic.h>

#include "pool.h"

#define MAX_THREADS 16
#define SPIN_CYCLES (1ull << 18)
#define STEP_SPIN_CYCLES (1ull << 21)
#define CHUNKS_PER_THREAD 4
#define MIN_CHUNK_COLUMNS 16

typedef struct {
    const float *x; int rows, K; const uint32_t *w; const float *scales, *biases;
    int G, bits; float *y; int ldy; int n0, n1, chunk, chunks;
    const int8_t *xq; const float *dx, *xg;  /* set: the int8 kernel */
    float *dequantized;  /* set: dequantize_rows into it */
    void (*task)(const void *, int, int); const void *ctx;  /* set: parallel_for's */
    int parts; const uint32_t *const *ws; const float *const *ss, *const *bs;
    const int *starts;  /* parts > 0: qmatmul_parts' weights side by side */
} job_t;

static job_t job;
static _Atomic unsigned long long ticket;
static atomic_int in_step;  /* qmatmul_step */
static atomic_int done;
static int n_workers;  /* started */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;

static inline unsigned long long cycles(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 3000000000ull + (unsigned long long)ts.tv_nsec * 3;
#endif
}

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Columns [a, b) of the job's weights side by side: each part's share of them. */
static void parts_range(int a, int b) {
    for (int p = 0; p < job.parts; p++) {
        const int lo = job.starts[p], hi = job.starts[p + 1];
        if (hi <= a || lo >= b) continue;
        qmatmul(job.x, job.rows, job.K, job.ws[p], job.ss[p], job.bs[p], job.G, job.bits,
                job.y + lo, job.ldy, (a > lo ? a : lo) - lo, (b < hi ? b : hi) - lo);
    }
}

/* Claim and run chunks of call `call` until none is left. */
static void work(unsigned call) {
    for (;;) {
        unsigned long long t = atomic_load_explicit(&ticket, memory_order_acquire);
        if ((unsigned)(t >> 32) != call) return;
        const int c = (int)(t & 0xffffu), chunks = (int)((t >> 16) & 0xffffu);
        if (c >= chunks) return;
        if (!atomic_compare_exchange_weak_explicit(&ticket, &t, t + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        const int a = job.n0 + c * job.chunk;
        const int b = a + job.chunk < job.n1 ? a + job.chunk : job.n1;
        if (job.task)
            job.task(job.ctx, a, b);
        else if (job.parts)
            parts_range(a, b);
        else if (job.dequantized)
            dequantize_rows(job.w, job.scales, job.biases, job.K, job.G, job.bits,
                            job.dequantized, a, b);
        else if (job.xq)
            qmatmul_i8(job.xq, job.dx, job.xg, job.rows, job.K, job.w, job.scales,
                       job.biases, job.G, job.bits, job.y, job.ldy, a, b);
        else
            qmatmul(job.x, job.rows, job.K, job.w, job.scales, job.biases, job.G, job.bits,
                    job.y, job.ldy, a, b);
        atomic_fetch_add_explicit(&done, 1, memory_order_release);
    }
}

static void *worker(void *arg) {
    (void)arg;
    unsigned seen = (unsigned)(atomic_load(&ticket) >> 32);
    for (;;) {
        const unsigned long long until =
            cycles() + (atomic_load_explicit(&in_step, memory_order_relaxed) ? STEP_SPIN_CYCLES
                                                                                 : SPIN_CYCLES);
        unsigned call;
        while ((call = (unsigned)(atomic_load_explicit(&ticket, memory_order_acquire) >> 32))
               == seen && cycles() < until)
            relax();
        if (call == seen) {
            pthread_mutex_lock(&lock);
            while ((call = (unsigned)(atomic_load(&ticket) >> 32)) == seen)
                pthread_cond_wait(&wake, &lock);
            pthread_mutex_unlock(&lock);
        }
        seen = call;
        work(call);
    }
    return NULL;
}

/* on = 1: a decode step begins (its calls come back to back: spin longer between them);
 * 0: it ended. */
void qmatmul_step(int on) { atomic_store_explicit(&in_step, on, memory_order_relaxed); }

/* Start workers so that `threads` (the caller included) can share a call; returns how
 * many can (1 if no thread could be started). One caller thread only. */
int qmatmul_threads(int threads) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    while (n_workers + 1 < threads) {
        pthread_t th;
        if (pthread_create(&th, NULL, worker, NULL) != 0) break;
        pthread_detach(th);
        n_workers++;
    }
    return n_workers + 1;
}

/* Run the job set up in `job` over the workers and the caller; returns when done. */
static void share(int threads, int min_chunk) {
    int chunk = (job.n1 - job.n0 + threads * CHUNKS_PER_THREAD - 1) / (threads * CHUNKS_PER_THREAD);
    if (chunk < min_chunk) chunk = min_chunk;
    job.chunk = chunk;
    job.chunks = (job.n1 - job.n0 + chunk - 1) / chunk;
    atomic_store_explicit(&done, 0, memory_order_relaxed);
    const unsigned call = (unsigned)(atomic_load(&ticket) >> 32) + 1;
    /* chunks <= threads * CHUNKS_PER_THREAD <= MAX_THREADS * 4: far inside 16 bits */
    atomic_store_explicit(&ticket, (unsigned long long)call << 32 |
                                   (unsigned long long)job.chunks << 16, memory_order_release);
    if (job.chunks > 1) {
        pthread_mutex_lock(&lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&lock);
    }
    work(call);
    while (atomic_load_explicit(&done, memory_order_acquire) < job.chunks) relax();
}

static void set_job(const float *x, const int8_t *xq, const float *dx, const float *xg,
                    float *dequantized, int rows, int K, const uint32_t *w,
                    const float *scales, const float *biases, int G, int bits, float *y,
                    int ldy, int n0, int n1) {
    job.task = NULL; job.ctx = NULL; job.parts = 0;
    job.x = x; job.xq = xq; job.dx = dx; job.xg = xg; job.dequantized = dequantized;
    job.rows = rows; job.K = K; job.w = w; job.scales = scales; job.biases = biases;
    job.G = G; job.bits = bits; job.y = y; job.ldy = ldy; job.n0 = n0; job.n1 = n1;
}

/* qmatmul over [n0, n1) shared with the workers (`threads` <= qmatmul_threads() of
 * them, the caller included); returns when all of it is done. One caller thread only. */
int qmatmul_mt(const float *x, int rows, int K, const uint32_t *w, const float *scales,
               const float *biases, int G, int bits, float *y, int ldy, int n0, int n1,
               int threads) {
    if (threads > n_workers + 1) threads = n_workers + 1;
    if (threads <= 1 || n1 - n0 <= 2 * MIN_CHUNK_COLUMNS)
        return qmatmul(x, rows, K, w, scales, biases, G, bits, y, ldy, n0, n1);
    if (!checked(K, G, bits, n0, n1, ldy)) return -1;
    set_job(x, NULL, NULL, NULL, NULL, rows, K, w, scales, biases, G, bits, y, ldy, n0, n1);
    share(threads, MIN_CHUNK_COLUMNS);
    return 0;
}

/* qmatmul_i8 the same way. */
int qmatmul_i8_mt(const int8_t *xq, const float *dx, const float *xg, int rows, int K,
                  const uint32_t *w, const float *scales, const float *biases, int G,
                  int bits, float *y, int ldy, int n0, int n1, int threads) {
    if (threads > n_workers + 1) threads = n_workers + 1;
    if (threads <= 1 || n1 - n0 <= 2 * MIN_CHUNK_COLUMNS || !HAVE_I8)
        return qmatmul_i8(xq, dx, xg, rows, K, w, scales, biases, G, bits, y, ldy, n0, n1);
    if (!i8_checked(K, G, bits, n0, n1, ldy)) return -1;
    set_job(NULL, xq, dx, xg, NULL, rows, K, w, scales, biases, G, bits, y, ldy, n0, n1);
    share(threads, MIN_CHUNK_COLUMNS);
    return 0;
}

/* dequantize_rows of all N rows, shared the same way. */
int dequantize_mt(const uint32_t *w, const float *scales, const float *biases, int N, int K,
                  int G, int bits, float *out, int threads) {
    if (!checked(K, G, bits, 0, 0, 0)) return -1;
    if (threads > n_workers + 1) threads = n_workers + 1;
    if (threads <= 1 || N <= 2 * MIN_CHUNK_COLUMNS) {
        dequantize_rows(w, scales, biases, K, G, bits, out, 0, N);
        return 0;
    }
    set_job(NULL, NULL, NULL, NULL, out, 0, K, w, scales, biases, G, bits, NULL, 0, 0, N);
    share(threads, MIN_CHUNK_COLUMNS);
    return 0;
}

/* task(ctx, a, b) over pieces [a, b) of [0, n), at least min_chunk long, shared with the
 * workers the same way (pool.h). One caller thread only. */
void parallel_for(void (*task)(const void *, int, int), const void *ctx, int n, int min_chunk,
                  int threads) {
    if (threads > n_workers + 1) threads = n_workers + 1;
    if (threads <= 1 || n <= min_chunk) {
        task(ctx, 0, n);
        return;
    }
    set_job(NULL, NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, NULL, 0, 0, NULL, 0, 0, n);
    job.task = task;
    job.ctx = ctx;
    share(threads, min_chunk);
}

/* y [rows, starts[parts]] = x times several weights of one input size and format, their
 * outputs side by side (q | k | v, gate | up): part p fills columns [starts[p],
 * starts[p + 1]), starts[0] = 0. One call and one hand-off to the workers for all of
 * them (a call per part paid its own). */
int qmatmul_parts(const float *x, int rows, int K, int parts, const uint32_t *const *ws,
                  const float *const *ss, const float *const *bs, const int *starts, int G,
                  int bits, float *y, int threads) {
    const int N = starts[parts];
    if (!checked(K, G, bits, 0, N, N)) return -1;
    if (threads > n_workers + 1) threads = n_workers + 1;
    set_job(x, NULL, NULL, NULL, NULL, rows, K, NULL, NULL, NULL, G, bits, y, N, 0, N);
    job.parts = parts; job.ws = ws; job.ss = ss; job.bs = bs; job.starts = starts;
    if (threads <= 1 || N <= 2 * MIN_CHUNK_COLUMNS) {
        parts_range(0, N);
        return 0;
    }
    share(threads, MIN_CHUNK_COLUMNS);
    return 0;
}
