/* A whole decode step of a Llama-family model with quantized projections, in one call;
 * and a prompt chunk of one sequence the same way (prefill_layers).
 *
 * llama_decoder.py ran a step as ~10 kernel calls a layer from Python, each with its numpy
 * temporaries (the 4-bit input reordering, RMSNorm and SwiGLU outputs, residual adds): at
 * one row the calls between the kernels cost about a sixth of the step. Here the layers run
 * back to back in C, on the same kernels (qmatmul_parts, attend_mt, rope_store, rms_norm,
 * swiglu: the same operations in the same order, so the logits are the Python loop's to the
 * bit), with work buffers kept per thread. Python still owns the cache bookkeeping and
 * hands in each layer's K/V buffer and the step's RoPE tables.
 *
 * A short prompt chunk through MLX paid a fixed ~0.1 s (an evaluation per projection, the
 * weights dequantized for an sgemm) before its first row: more than the rows themselves
 * for the few dozen tokens of a chat turn. prefill_layers runs such a chunk like a decode
 * step of n rows of one sequence: its rows take the positions pos .. pos + n - 1 and
 * attend causally (prefill_attention.c); past `gemm_rows` rows the projections go through
 * qgemm.c's GEMM instead of the few-row kernel.
 */
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "pool.h"

#define MAX_PARTS 3
#define CHUNK 32

/* Weights of one input sharing a format, their outputs side by side (q | k | v). */
typedef struct {
    int parts, K, G, bits;
    const uint32_t *w[MAX_PARTS];
    const float *s[MAX_PARTS], *b[MAX_PARTS];
    int starts[MAX_PARTS + 1];
    const float *bias;  /* NULL, or starts[parts] floats added to every output row */
} qstack_t;

typedef struct {
    const float *attn_norm, *mlp_norm;
    qstack_t qkv, out, gate_up, down;
} qlayer_t;

THREAD_SCRATCH(step_buffer)

/* x [rows, K] in the order the kernel reads it (qmatmul.c): 4-bit takes each 32-input
 * chunk as its 16 even inputs then its 16 odd ones; 8-bit x as it is. */
static const float *arranged(const float *x, int rows, int K, int bits, float *dst) {
    if (bits != 4) return x;
    for (int64_t c = 0; c < (int64_t)rows * K; c += CHUNK)
        for (int i = 0; i < CHUNK / 2; i++) {
            dst[c + i] = x[c + 2 * i];
            dst[c + CHUNK / 2 + i] = x[c + 2 * i + 1];
        }
    return dst;
}

/* y [rows, N] += the stack's bias, where it has one. */
static void add_bias(const qstack_t *m, int rows, float *y) {
    if (!m->bias) return;
    const int N = m->starts[m->parts];
    for (int r = 0; r < rows; r++)
        for (int n = 0; n < N; n++) y[(int64_t)r * N + n] += m->bias[n];
}

/* y [rows, N] = x @ W.T (+ bias); x as it is, arranged into `tmp` where the format wants. */
static int matmul(const qstack_t *m, const float *x, int rows, float *tmp, float *y,
                  int threads) {
    const float *xa = arranged(x, rows, m->K, m->bits, tmp);
    if (qmatmul_parts(xa, rows, m->K, m->parts, m->w, m->s, m->b, m->starts, m->G, m->bits,
                      y, threads) != 0)
        return -1;
    add_bias(m, rows, y);
    return 0;
}

/* The same through qgemm.c (rows >= 1; x as it is): each part into `tmp`, then placed
 * beside the others in y's rows. */
static int matmul_gemm(const qstack_t *m, const float *x, int rows, float *tmp, float *y,
                       int threads) {
    const int N = m->starts[m->parts];
    for (int p = 0; p < m->parts; p++) {
        const int n0 = m->starts[p], np = m->starts[p + 1] - n0;
        float *dst = m->parts == 1 ? y : tmp;
        const int rc = qgemm(x, rows, m->K, m->w[p], m->s[p], m->b[p], np, m->G, m->bits,
                             dst, threads);
        if (rc != 0) return rc;
        if (m->parts > 1)
            for (int r = 0; r < rows; r++)
                memcpy(y + (int64_t)r * N + n0, tmp + (int64_t)r * np, sizeof(float) * np);
    }
    add_bias(m, rows, y);
    return 0;
}

static void add_into(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* buf[i] = sizes[i] floats each, from this thread's step buffer, 64-byte aligned starts.
 * Returns -2 without memory. */
static int carve(const int64_t *sizes, int count, float **buf) {
    int64_t total = 0;
    for (int i = 0; i < count; i++) total += (sizes[i] + 15) / 16 * 16;
    float *base = step_buffer((size_t)total);
    if (base == NULL) return -2;
    for (int64_t i = 0, at = 0; i < count; at += (sizes[i] + 15) / 16 * 16, i++)
        buf[i] = base + at;
    return 0;
}

/* The layers of one decode step for B rows: x [B, D] the token embeddings in, the last
 * layer's output out (in place). Layer l reads and extends keys[l] / values[l]
 * ([B, Hkv, cap, d]) at position pos, rows attending from start[b]; cos, sin [B, d/2]
 * the rows' RoPE tables; I the MLP's width. Returns 0, -1 for arguments a kernel refused,
 * -2 without memory for the work buffers. */
int decode_layers(const qlayer_t *layers, int L, float *x, int B, int D, int H, int Hkv,
                  int d, int I, float *const *keys, float *const *values, int64_t cap,
                  int pos, const int32_t *start, const float *cos, const float *sin,
                  float eps, float scale, int threads) {
    const int64_t qkv_n = (int64_t)(H + 2 * Hkv) * d, hd = (int64_t)H * d;
    const int64_t widest = max64(max64(D, hd), I);
    const int64_t sizes[] = {B * widest, B * widest, B * qkv_n, B * hd, B * hd,
                             B * max64(D, 2 * (int64_t)I), (int64_t)B * H * (pos + 1)};
    enum { NORMED, ARRANGED, QKV, Q, ATT, WIDE, SCORES, N_BUF };
    float *buf[N_BUF];
    if (carve(sizes, N_BUF, buf)) return -2;
    for (int l = 0; l < L; l++) {
        const qlayer_t *la = &layers[l];
        rms_norm(x, B, D, la->attn_norm, eps, buf[NORMED]);
        if (matmul(&la->qkv, buf[NORMED], B, buf[ARRANGED], buf[QKV], threads)) return -1;
        rope_store(buf[QKV], B, H, Hkv, d, cos, sin, buf[Q], keys[l], values[l], cap, pos);
        if (attend_mt(buf[Q], B, H, Hkv, d, keys[l], values[l], cap, start, pos + 1, scale,
                      buf[ATT], buf[SCORES], threads))
            return -1;
        if (matmul(&la->out, buf[ATT], B, buf[ARRANGED], buf[WIDE], threads)) return -1;
        add_into(x, buf[WIDE], (int64_t)B * D);
        rms_norm(x, B, D, la->mlp_norm, eps, buf[NORMED]);
        if (matmul(&la->gate_up, buf[NORMED], B, buf[ARRANGED], buf[WIDE], threads)) return -1;
        swiglu(buf[WIDE], B, I, buf[NORMED]);
        if (matmul(&la->down, buf[NORMED], B, buf[ARRANGED], buf[WIDE], threads)) return -1;
        add_into(x, buf[WIDE], (int64_t)B * D);
    }
    return 0;
}

/* The step's end: logits [B, V] = head(rms_norm(x, norm)). */
int decode_head(const qstack_t *head, const float *x, int B, int D, const float *norm,
                float eps, float *logits, int threads) {
    const int64_t sizes[] = {(int64_t)B * D, (int64_t)B * D};  /* normed x, arranged x */
    float *buf[2];
    if (carve(sizes, 2, buf)) return -2;
    rms_norm(x, B, D, norm, eps, buf[0]);
    return matmul(head, buf[0], B, buf[1], logits, threads);
}

/* a [n, H, d] <-> [H, n, d] */
static void swap_heads(const float *src, int n, int H, int d, float *dst, int to_heads) {
    for (int i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            const int64_t rowwise = ((int64_t)i * H + h) * d, headwise = ((int64_t)h * n + i) * d;
            memcpy(dst + (to_heads ? headwise : rowwise), src + (to_heads ? rowwise : headwise),
                   sizeof(float) * d);
        }
}

/* The layers for n consecutive positions of one sequence (a prompt chunk): x [n, D] the
 * token embeddings in, the last layer's output out (in place). Layer l's keys[l] /
 * values[l] ([Hkv, cap, d], positions before pos already filled) get positions pos ..
 * pos + n - 1, and row i attends to positions 0 .. pos + i. cos, sin [n, d/2]. From
 * `gemm_rows` rows on (0: never) the projections take qgemm.c's GEMM. Returns 0, -1 for
 * arguments a kernel refused (the prefill attention wants AVX-512), -2 without memory. */
int prefill_layers(const qlayer_t *layers, int L, float *x, int n, int D, int H, int Hkv,
                   int d, int I, float *const *keys, float *const *values, int64_t cap,
                   int pos, const float *cos, const float *sin, float eps, float scale,
                   int gemm_rows, int threads) {
    if (n <= 0 || pos < 0 || pos + n > cap) return -1;
    const int64_t qkv_n = (int64_t)(H + 2 * Hkv) * d, hd = (int64_t)H * d;
    const int64_t widest = max64(max64(max64(D, hd), 2 * (int64_t)I), qkv_n);
    const int64_t sizes[] = {n * widest, n * widest, n * qkv_n, n * hd, n * hd,
                             n * max64(D, 2 * (int64_t)I)};
    enum { NORMED, ARRANGED, QKV, Q, HEADS, WIDE, N_BUF };
    float *buf[N_BUF];
    if (carve(sizes, N_BUF, buf)) return -2;
    const int gemm = gemm_rows > 0 && n >= gemm_rows;
    const int half = d / 2;
#define PROJECT(stack, in, out)                                                        \
    (gemm ? matmul_gemm(stack, in, n, buf[ARRANGED], out, threads)                    \
          : matmul(stack, in, n, buf[ARRANGED], out, threads))
    for (int l = 0; l < L; l++) {
        const qlayer_t *la = &layers[l];
        int rc;
        rms_norm(x, n, D, la->attn_norm, eps, buf[NORMED]);
        if ((rc = PROJECT(&la->qkv, buf[NORMED], buf[QKV]))) return rc;
        for (int i = 0; i < n; i++)
            rope_store(buf[QKV] + i * qkv_n, 1, H, Hkv, d, cos + (int64_t)i * half,
                       sin + (int64_t)i * half, buf[Q] + i * hd, keys[l], values[l], cap,
                       pos + i);
        swap_heads(buf[Q], n, H, d, buf[HEADS], 1);
        if ((rc = prefill_attend(buf[HEADS], H, n, d, keys[l], values[l], cap * d, Hkv,
                                 pos + n, scale, buf[Q], threads)))
            return rc;
        swap_heads(buf[Q], n, H, d, buf[HEADS], 0);
        if ((rc = PROJECT(&la->out, buf[HEADS], buf[WIDE]))) return rc;
        add_into(x, buf[WIDE], (int64_t)n * D);
        rms_norm(x, n, D, la->mlp_norm, eps, buf[NORMED]);
        if ((rc = PROJECT(&la->gate_up, buf[NORMED], buf[WIDE]))) return rc;
        swiglu(buf[WIDE], n, I, buf[NORMED]);
        if ((rc = PROJECT(&la->down, buf[NORMED], buf[WIDE]))) return rc;
        add_into(x, buf[WIDE], (int64_t)n * D);
    }
#undef PROJECT
    return 0;
}
