// Skinny GEMM on the CPU: y[M, N] = x[M, K] @ w[N, K]^T (+ bias) for few rows (any M with
// bfloat16 weights); x, bias, y float32, w float32 or bfloat16 (widened in registers).
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

#include "cpu_simd.h"

namespace baton {

#if defined(__x86_64__)
namespace {

using simd::hsum;
using simd::load8;

constexpr int64_t kGrain = 64;  // weight rows per task: enough work to amortise a task

// R weight rows against C input rows: R * C accumulators, R + C loads per 8 values of K.
// R = 4, C = 3 fills the 16 ymm registers (12 sums, 3 inputs, 1 weight vector): 12 FMAs per
// 7 loads, so tens of rows run FMA-bound (4 x 2 ran at 8 of its 11 registers). Splitting K
// into L2-sized passes measured slower at every row count up to 512 on the development CPU.
template <int R, int C, typename WT>
BATON_AVX2 void tile(const float* x, const WT* w, int64_t K, const float* bias, float* y,
                     int64_t ldy) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv[C];
    for (int c = 0; c < C; ++c) xv[c] = _mm256_loadu_ps(x + c * K + k);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = load8(w + r * K + k);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float s = hsum(acc[r][c]);
      for (int64_t t = k; t < K; ++t) s += static_cast<float>(w[r * K + t]) * x[c * K + t];
      y[c * ldy + r] = bias ? s + bias[r] : s;
    }
  }
}

// R weight rows against all M input rows, three at a time.
template <int R, typename WT>
BATON_AVX2 void row_block(const float* x, int64_t M, const WT* w, int64_t K, const float* bias,
                          float* y, int64_t ldy) {
  int64_t m = 0;
  for (; m + 3 <= M; m += 3) tile<R, 3>(x + m * K, w, K, bias, y + m * ldy, ldy);
  if (M - m == 2) tile<R, 2>(x + m * K, w, K, bias, y + m * ldy, ldy);
  if (M - m == 1) tile<R, 1>(x + m * K, w, K, bias, y + m * ldy, ldy);
}

template <typename WT>
BATON_AVX2 void rows_avx2(const float* x, int64_t M, const WT* w, int64_t K, const float* bias,
                          float* y, int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    row_block<4>(x, M, w + n * K, K, bias ? bias + n : nullptr, y + n, N);
  for (; n < n1; ++n) row_block<1>(x, M, w + n * K, K, bias ? bias + n : nullptr, y + n, N);
}

template <typename WT>
void skinny(const at::Tensor& x, const at::Tensor& w, const float* bias, at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const float* xp = x.data_ptr<float>();
  const WT* wp = w.data_ptr<WT>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
    rows_avx2(xp, M, wp, K, bias, yp, N, n0, n1);
  });
}

}  // namespace

bool skinny_linear_supported() { return simd::cpu_has_avx2_fma(); }

at::Tensor skinny_linear_cpu(const at::Tensor& x, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias) {
  at::Tensor y = at::empty({x.size(0), w.size(0)}, x.options());
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  if (w.scalar_type() == at::kBFloat16) {
    skinny<c10::BFloat16>(x, w, bp, y);
  } else {
    skinny<float>(x, w, bp, y);
  }
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
