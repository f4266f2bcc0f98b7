// RMSNorm with an optional fused residual add on the CPU, one pass over each row.
//
// The torch composition (add, float cast, pow, mean, rsqrt, two multiplies, cast) launches
// about eight ops per call; a decode step calls it four times per layer, and at prefill
// sizes the intermediates are row-sized tensors. Rounding follows Qwen3's RMSNorm: the sum
// with the residual and the normalised value are rounded to the input dtype.
#include "rms_norm_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>

#include "cpu_simd.h"

namespace baton {
namespace {

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

#if defined(__x86_64__)
template <typename T>
BATON_AVX2 float sum_squares_avx2(const T* v, int64_t H) {
  __m256 a = _mm256_setzero_ps();
  for (int64_t i = 0; i < H; i += 8) {
    const __m256 x = simd::load8(v + i);
    a = _mm256_fmadd_ps(x, x, a);
  }
  return simd::hsum(a);
}
#endif

template <typename T>
float sum_squares(const T* v, int64_t H) {
#if defined(__x86_64__)
  if (H % 8 == 0 && simd::cpu_has_avx2_fma()) return sum_squares_avx2(v, H);
#endif
  float s = 0.0f;
  for (int64_t i = 0; i < H; ++i) s += to_float(v[i]) * to_float(v[i]);
  return s;
}

template <typename T>
void rows(const T* x, const T* residual, const T* weight, T* out, T* new_residual, int64_t N,
          int64_t H, float eps) {
  const int64_t grain = std::max<int64_t>(1, 32768 / H);  // rows per task: ~128 KiB of input
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* v = x + n * H;
      if (residual != nullptr) {
        T* nr = new_residual + n * H;
        const T* r = residual + n * H;
        for (int64_t i = 0; i < H; ++i) nr[i] = T(to_float(v[i]) + to_float(r[i]));
        v = nr;
      }
      const float inv = 1.0f / std::sqrt(sum_squares(v, H) / static_cast<float>(H) + eps);
      T* o = out + n * H;
      for (int64_t i = 0; i < H; ++i) o[i] = T(to_float(weight[i]) * to_float(T(to_float(v[i]) * inv)));
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                double eps,
                                                const std::optional<at::Tensor>& residual) {
  const int64_t H = x.size(-1), N = H ? x.numel() / H : 0;
  at::Tensor out = at::empty_like(x);
  at::Tensor new_residual = residual ? at::empty_like(x) : at::Tensor();
  if (x.scalar_type() == at::kBFloat16) {
    using T = c10::BFloat16;
    rows<T>(x.data_ptr<T>(), residual ? residual->data_ptr<T>() : nullptr, weight.data_ptr<T>(),
            out.data_ptr<T>(), residual ? new_residual.data_ptr<T>() : nullptr, N, H, eps);
  } else {
    rows<float>(x.data_ptr<float>(), residual ? residual->data_ptr<float>() : nullptr,
                weight.data_ptr<float>(), out.data_ptr<float>(),
                residual ? new_residual.data_ptr<float>() : nullptr, N, H, eps);
  }
  return {out, new_residual};
}

}  // namespace baton
