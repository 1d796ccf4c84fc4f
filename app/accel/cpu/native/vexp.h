/* exp(x) on float vectors for the kernels here: 2^n * e^r with n = round(x / ln 2),
 * |r| <= ln2/2, e^r from a degree-6 polynomial (a couple of float32 ulps); x clamped to
 * [-87, 88], where float32's exponent ends. The same reduction and coefficients as
 * kernels.py's fast_exp; 8 lanes (AVX2) and 16 (AVX-512). */
#ifndef MLXD_VEXP_H
#define MLXD_VEXP_H

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
