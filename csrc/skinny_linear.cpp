// Skinny GEMM on the CPU: y[M, N] = x[M, K] @ w[N, K]^T (+ bias), float32, for small M.
//
// Decode steps and warm prefills multiply a handful of rows by every weight matrix. At those
// shapes the BLAS sgemm path re-packs the weight on every call, so M = 2..8 run several times
// slower than M = 1 (a GEMV) although they read the same bytes (bench/kernels/
// test_bench_linear.py). Here each weight row is read from memory once: a block of R rows is
// dotted with every input row while it sits in L1/L2, so the time stays near the weight-read
// time. Threads split the weight rows (output columns).
#include "skinny_linear.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define BATON_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace baton {

#if defined(__x86_64__)
namespace {

constexpr int64_t kGrain = 64;  // weight rows per task: enough work to amortise a task

BATON_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// R weight rows against C input rows: R * C accumulators, R + C loads per 8 values of K.
// R = 4, C = 2 uses 11 of the 16 ymm registers.
template <int R, int C>
BATON_AVX2 void tile(const float* x, const float* w, int64_t K, const float* bias, float* y,
                     int64_t ldy) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv[C];
    for (int c = 0; c < C; ++c) xv[c] = _mm256_loadu_ps(x + c * K + k);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * K + k);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float s = hsum(acc[r][c]);
      for (int64_t t = k; t < K; ++t) s += w[r * K + t] * x[c * K + t];
      y[c * ldy + r] = bias ? s + bias[r] : s;
    }
  }
}

// R weight rows against all M input rows, two at a time.
template <int R>
BATON_AVX2 void row_block(const float* x, int64_t M, const float* w, int64_t K,
                          const float* bias, float* y, int64_t ldy) {
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) tile<R, 2>(x + m * K, w, K, bias, y + m * ldy, ldy);
  if (m < M) tile<R, 1>(x + m * K, w, K, bias, y + m * ldy, ldy);
}

BATON_AVX2 void rows_avx2(const float* x, int64_t M, const float* w, int64_t K, const float* bias,
                          float* y, int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    row_block<4>(x, M, w + n * K, K, bias ? bias + n : nullptr, y + n, N);
  for (; n < n1; ++n) row_block<1>(x, M, w + n * K, K, bias ? bias + n : nullptr, y + n, N);
}

}  // namespace

bool skinny_linear_supported() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

at::Tensor skinny_linear_cpu(const at::Tensor& x, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
    rows_avx2(xp, M, wp, K, bp, yp, N, n0, n1);
  });
  return y;
}

#else  // not x86-64: the Python wrapper never calls the kernel (skinny_linear_supported)

bool skinny_linear_supported() { return false; }

at::Tensor skinny_linear_cpu(const at::Tensor&, const at::Tensor&,
                             const std::optional<at::Tensor>&) {
  TORCH_CHECK(false, "skinny_linear: needs an x86-64 CPU with AVX2 and FMA");
}

#endif

}  // namespace baton
