// Vector types for the CPU kernels, one per instruction-set path (cpu_isa.h): each kernel body
// (*_body.inc) is written once against `V` and included once per path, inside a
// `#pragma GCC target` region and an anonymous namespace (internal linkage, so code compiled
// for AVX-512 is never shared with a caller that runs on an AVX2 machine). The members carry
// their own target attribute, so the module builds without -mavx2/-mavx512f and the callers
// pick a path at run time (cpu::active_isa).
//
// Every V has: W (floats per register), kCols (input rows per GEMM tile), kPanelRows (weight
// rows per panel-GEMM tile: 2 x kPanelRows sums, 2 inputs and a broadcast in registers), reg, zero, set1,
// load (float or bfloat16, widened to float), fma(a, b, c) = a * b + c, add, store, hsum,
// prefetch (a hint: one cache line into L1). kPairedBf16: whether load_pair(p, even, odd)
// exists, widening 2W bfloat16 values at once into their even- and odd-indexed lanes.
// kHeldSums: how many vectors of running sums a loop may keep live besides its operands
// without spilling (the generic path's arrays spill past one).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace baton::simd {

// Scalar widening for the loops written once for both dtypes.
inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

// Portable: eight lanes in plain arrays; the compiler vectorises the lane loops with whatever
// the baseline target has (SSE2 on x86-64). The eight-lane sums keep the same summation order
// as the AVX2 path.
struct VecGeneric {
  static constexpr int W = 8;
  static constexpr int kCols = 2;
  static constexpr int kPanelRows = 4;
  static constexpr bool kPairedBf16 = false;
  static constexpr int kHeldSums = 1;
  struct reg {
    float v[8];
  };
  static inline reg zero() { return set1(0.0f); }
  static inline reg set1(float a) {
    reg r;
    for (int i = 0; i < 8; ++i) r.v[i] = a;
    return r;
  }
  static inline reg load(const float* p) {
    reg r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static inline reg load(const c10::BFloat16* p) {
    reg r;
    for (int i = 0; i < 8; ++i) {
      const uint32_t bits = static_cast<uint32_t>(p[i].x) << 16;
      std::memcpy(&r.v[i], &bits, 4);
    }
    return r;
  }
  // Defined for the shared body to compile; unused (kPairedBf16 is false).
  static inline void load_pair(const c10::BFloat16* p, reg& even, reg& odd) {
    for (int i = 0; i < 8; ++i) {
      even.v[i] = static_cast<float>(p[2 * i]);
      odd.v[i] = static_cast<float>(p[2 * i + 1]);
    }
  }
  static inline reg fma(reg a, reg b, reg c) {
    for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static inline reg add(reg a, reg b) {
    for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
    return a;
  }
  static inline void store(float* p, reg a) { std::memcpy(p, a.v, sizeof(a.v)); }
  static inline void prefetch(const char* p) { __builtin_prefetch(p); }
  static inline float hsum(reg a) {
    for (int w = 4; w > 0; w /= 2)
      for (int i = 0; i < w; ++i) a.v[i] += a.v[i + w];
    return a.v[0];
  }
};

}  // namespace baton::simd

#if defined(__x86_64__)
#include <immintrin.h>

#define BATON_TARGET_AVX2 "avx2,fma"
#define BATON_TARGET_AVX512 "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq"

#define BATON_AVX2 __attribute__((target(BATON_TARGET_AVX2)))
#define BATON_AVX512 __attribute__((target(BATON_TARGET_AVX512)))

namespace baton::simd {

struct VecAvx2 {
  static constexpr int W = 8;
  // R = 4 weight rows x 3 input rows fill the 16 ymm registers (12 sums, 3 inputs, 1 weight).
  static constexpr int kCols = 3;
  static constexpr int kPanelRows = 6;  // 12 sums + 2 inputs + 1 broadcast: 15 of 16 ymm
  static constexpr bool kPairedBf16 = true;
  static constexpr int kHeldSums = 4;
  using reg = __m256;
  BATON_AVX2 static inline reg zero() { return _mm256_setzero_ps(); }
  BATON_AVX2 static inline reg set1(float a) { return _mm256_set1_ps(a); }
  BATON_AVX2 static inline reg load(const float* p) { return _mm256_loadu_ps(p); }
  // bfloat16 is the top half of a float32.
  BATON_AVX2 static inline reg load(const c10::BFloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  // 16 bfloat16 values: each 32-bit lane holds values 2i (low half) and 2i + 1 (high half).
  BATON_AVX2 static inline void load_pair(const c10::BFloat16* p, reg& even, reg& odd) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(h, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  BATON_AVX2 static inline reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  BATON_AVX2 static inline reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  BATON_AVX2 static inline void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  BATON_AVX2 static inline void prefetch(const char* p) { _mm_prefetch(p, _MM_HINT_T0); }
  BATON_AVX2 static inline float hsum(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

struct VecAvx512 {
  static constexpr int W = 16;
  // 32 zmm registers: 4 x 4 tiles (16 sums, 4 inputs, 1 weight) with room to spare.
  static constexpr int kCols = 4;
  static constexpr int kPanelRows = 12;  // 24 sums + 2 inputs + 1 broadcast: 27 of 32 zmm
  static constexpr bool kPairedBf16 = true;
  static constexpr int kHeldSums = 4;
  using reg = __m512;
  BATON_AVX512 static inline reg zero() { return _mm512_setzero_ps(); }
  BATON_AVX512 static inline reg set1(float a) { return _mm512_set1_ps(a); }
  BATON_AVX512 static inline reg load(const float* p) { return _mm512_loadu_ps(p); }
  BATON_AVX512 static inline reg load(const c10::BFloat16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  BATON_AVX512 static inline void load_pair(const c10::BFloat16* p, reg& even, reg& odd) {
    const __m512i h = _mm512_loadu_si512(reinterpret_cast<const void*>(p));
    even = _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(h, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  BATON_AVX512 static inline reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  BATON_AVX512 static inline reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  BATON_AVX512 static inline void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
  BATON_AVX512 static inline void prefetch(const char* p) { _mm_prefetch(p, _MM_HINT_T0); }
  BATON_AVX512 static inline float hsum(reg v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace baton::simd

#endif
