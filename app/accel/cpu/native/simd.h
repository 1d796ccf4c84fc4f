/* Small vector helpers the kernels here share.
 *
 * hsum8: the sum of 8 float lanes (halves, then pairs, then the last two).
 *
 * exp(x) on float vectors: 2^n * e^r with n = round(x / ln 2), |r| <= ln2/2, e^r from a
 * degree-6 polynomial (a couple of float32 ulps); x clamped to [-87, 88], where float32's
 * exponent ends. The same reduction and coefficients as kernels.py's fast_exp; 8 lanes
 * (AVX2) and 16 (AVX-512). */
#ifndef MLXD_SIMD_H
#define MLXD_SIMD_H

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define VEXP_MIN -87.0f
#define VEXP_MAX 88.0f
#define VEXP_LOG2E 1.44269504f
#define VEXP_LN2_HI 0.693359375f
#define VEXP_LN2_LO -2.12194440e-4f
#define VEXP_C5 1.9875691500e-4f
#define VEXP_C4 1.3981999507e-3f
#define VEXP_C3 8.3334519073e-3f
#define VEXP_C2 4.1665795894e-2f
#define VEXP_C1 1.6666665459e-1f
#define VEXP_C0 5.0000001201e-1f

#if defined(__AVX2__) && defined(__FMA__)
static inline float hsum8(__m256 t) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    const __m128 p = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(p, _mm_shuffle_ps(p, p, 1)));
}

static inline __m256 exp_ps(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(VEXP_MIN)), _mm256_set1_ps(VEXP_MAX));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(VEXP_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(VEXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(VEXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(VEXP_C5);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(VEXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(VEXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(VEXP_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(VEXP_C1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(VEXP_C0));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                         _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

#if defined(__AVX512F__)
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(VEXP_MIN)), _mm512_set1_ps(VEXP_MAX));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(VEXP_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(VEXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(VEXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(VEXP_C5);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VEXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VEXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VEXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VEXP_C1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VEXP_C0));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n),
                                                         _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}
#endif

#endif
