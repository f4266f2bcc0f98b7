// Helpers shared by the CPU kernels (skinny_linear.cpp, paged_decode_cpu.cpp,
// rms_norm_cpu.cpp). The AVX2/FMA ones carry the target attribute, so the files build without
// -mavx2 and the callers check the CPU at run time (cpu_has_avx2_fma) before entering them.
#pragma once

#include <c10/util/BFloat16.h>

namespace baton::simd {

// Scalar widening for the loops written once for both dtypes.
inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

}  // namespace baton::simd

#if defined(__x86_64__)
#include <immintrin.h>

#define BATON_AVX2 __attribute__((target("avx2,fma")))

namespace baton::simd {

inline bool cpu_has_avx2_fma() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

BATON_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight values as float32: float32 loads as is; bfloat16 is the top half of a float32.
BATON_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
BATON_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

}  // namespace baton::simd

#endif
