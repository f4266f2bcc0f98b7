// The benches measure decode against a floor: the time to read the weights' bytes. torch's
// sum reads each thread's share as one stream; on the AVX2 EPYC the decoder's weight
// tensors, read one after another, went 1.2x faster as 4 runs side by side per thread (more
// misses in flight, each run one the hardware prefetcher follows), and so did the skinny GEMM
// once it read its weights that way (skinny_body.inc). A floor that the GEMM beats is no
// floor, so bench/common.py takes the fastest of these reads. Integer adds: one-cycle adds
// never hold the loads back, and the value, which only keeps the reads from being optimised
// away, lets a test check that every byte was read.
#include "stream_read.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_isa.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace baton {
namespace {

// The sum of words [0, n) read as S runs side by side, two vectors of L words per run per
// step; the words after the last whole step of every run are summed on their own. VecT,
// load, add and lanes: one integer vector type of the path.
#define BATON_RUNS_SUM(VecT, L, zero, load, add)                                         \
  template <int S>                                                                      \
  uint32_t runs_sum(const uint32_t* x, int64_t n) {                                     \
    const int64_t run = n / S / (2 * L) * (2 * L);                                      \
    VecT a[S], b[S];                                                                    \
    for (int s = 0; s < S; ++s) a[s] = b[s] = zero;                                     \
    for (int64_t i = 0; i < run; i += 2 * L)                                            \
      for (int s = 0; s < S; ++s) {                                                     \
        a[s] = add(a[s], load(x + s * run + i));                                        \
        b[s] = add(b[s], load(x + s * run + i + L));                                    \
      }                                                                                 \
    uint32_t total = 0;                                                                 \
    for (int s = 0; s < S; ++s) {                                                       \
      uint32_t v[L];                                                                    \
      std::memcpy(v, &a[s], sizeof(v));                                                 \
      for (int j = 0; j < L; ++j) total += v[j];                                        \
      std::memcpy(v, &b[s], sizeof(v));                                                 \
      for (int j = 0; j < L; ++j) total += v[j];                                        \
    }                                                                                   \
    for (int64_t i = S * run; i < n; ++i) total += x[i];                                \
    return total;                                                                       \
  }

namespace generic {
#if defined(__x86_64__)
inline __m128i load(const uint32_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
BATON_RUNS_SUM(__m128i, 4, _mm_setzero_si128(), load, _mm_add_epi32)
#else
struct Vec { uint32_t v[4]; };
inline Vec load(const uint32_t* p) { Vec r; std::memcpy(r.v, p, sizeof(r.v)); return r; }
inline Vec add(Vec a, Vec b) { for (int j = 0; j < 4; ++j) a.v[j] += b.v[j]; return a; }
BATON_RUNS_SUM(Vec, 4, Vec{}, load, add)
#endif
}  // namespace generic

#if defined(__x86_64__)
// Wider loads read faster: 32-byte ones 1.1-1.4x 16-byte ones on the AVX2 EPYC (fewer loads
// in flight for the same bytes), so each path reads with the widest this CPU has.
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
inline __m256i load(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
BATON_RUNS_SUM(__m256i, 8, _mm256_setzero_si256(), load, _mm256_add_epi32)
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,avx512f")
namespace avx512 {
inline __m512i load(const uint32_t* p) { return _mm512_loadu_si512(p); }
BATON_RUNS_SUM(__m512i, 16, _mm512_setzero_si512(), load, _mm512_add_epi32)
}  // namespace avx512
#pragma GCC pop_options
#endif
#undef BATON_RUNS_SUM

template <int S>
uint32_t runs_sum(const uint32_t* x, int64_t n) {
#if defined(__x86_64__)
  const cpu::Isa isa = cpu::detected_isa();
  if (isa >= cpu::Isa::kAvx512) return avx512::runs_sum<S>(x, n);
  if (isa >= cpu::Isa::kAvx2) return avx2::runs_sum<S>(x, n);
#endif
  return generic::runs_sum<S>(x, n);
}

uint32_t runs_sum(const uint32_t* x, int64_t n, int64_t streams) {
  switch (streams) {
    case 1: return runs_sum<1>(x, n);
    case 2: return runs_sum<2>(x, n);
    case 4: return runs_sum<4>(x, n);
    default: return runs_sum<8>(x, n);
  }
}

}  // namespace

uint32_t stream_read_sum(const at::Tensor& x, int64_t streams) {
  const auto* bytes = static_cast<const unsigned char*>(x.data_ptr());
  const int64_t nbytes = x.numel() * x.element_size(), words = nbytes / 4;
  uint32_t total = 0;
  for (int64_t i = words * 4; i < nbytes; ++i) total += bytes[i];
  // (Unaligned loads: a tensor of 1- or 2-byte values may start at any even address.)
  const auto* w = reinterpret_cast<const uint32_t*>(bytes);
  const int threads = std::max(1, at::get_num_threads());
  std::vector<uint32_t> part(threads, 0);
  const int64_t share = (words + threads - 1) / threads;
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t a = std::min(words, t * share), b = std::min(words, a + share);
      part[t] = runs_sum(w + a, b - a, streams);
    }
  });
  for (uint32_t v : part) total += v;
  return total;
}

}  // namespace baton
