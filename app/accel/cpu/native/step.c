/* A whole decode step of a Llama-family model with quantized projections, in one call.
 *
 * llama_decoder.py ran a step as ~10 kernel calls a layer from Python, each with its numpy
 * temporaries (the 4-bit input reordering, RMSNorm and SwiGLU outputs, residual adds): at
 * one row the calls between the kernels cost about a sixth of the step. Here the layers run
 * back to back in C, on the same kernels (qmatmul_parts, attend_mt, rope_store, rms_norm,
 * swiglu: the same operations in the same order, so the logits are the Python loop's to the
 * bit), with work buffers kept per thread. Python still owns the cache bookkeeping and
 * hands in each layer's K/V buffer and the step's RoPE tables.
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

/* y [rows, N] = x @ W.T (+ bias); x as it is, arranged into `tmp` where the format wants. */
static int matmul(const qstack_t *m, const float *x, int rows, float *tmp, float *y,
                  int threads) {
    const float *xa = arranged(x, rows, m->K, m->bits, tmp);
    if (qmatmul_parts(xa, rows, m->K, m->parts, m->w, m->s, m->b, m->starts, m->G, m->bits,
                      y, threads) != 0)
        return -1;
    if (m->bias) {
        const int N = m->starts[m->parts];
        for (int r = 0; r < rows; r++)
            for (int n = 0; n < N; n++) y[(int64_t)r * N + n] += m->bias[n];
    }
    return 0;
}

static void add_into(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

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
    int64_t total = 0;
    for (int i = 0; i < N_BUF; i++) total += (sizes[i] + 15) / 16 * 16;  /* 64-byte starts */
    float *base = step_buffer((size_t)total);
    if (base == NULL) return -2;
    float *buf[N_BUF];
    for (int i = 0, at = 0; i < N_BUF; at += (int)((sizes[i] + 15) / 16 * 16), i++)
        buf[i] = base + at;
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
    float *base = step_buffer((size_t)(2 * (int64_t)B * ((D + 15) / 16 * 16)));
    if (base == NULL) return -2;
    float *normed = base, *tmp = base + (int64_t)B * ((D + 15) / 16 * 16);
    rms_norm(x, B, D, norm, eps, normed);
    return matmul(head, normed, B, tmp, logits, threads);
}
