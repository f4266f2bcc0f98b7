// RMSNorm with an optional fused residual add on the CPU, one pass over each row.
//
// The torch composition (add, float cast, pow, mean, rsqrt, two multiplies, cast) launches
// about eight ops per call; a decode step calls it four times per layer, and at prefill
// sizes the intermediates are row-sized tensors. Rounding follows Qwen3's RMSNorm: the sum
// with the residual and the normalised value are rounded to the input dtype. One body
// (rms_norm_body.inc) per instruction-set path (cpu_isa.h).
#include "rms_norm_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>

#include "cpu_isa.h"
#include "cpu_simd.h"

namespace baton {
namespace {

using cpu::Isa;

#define BATON_ISA_BODY "rms_norm_body.inc"
#include "isa_bodies.inc"
#undef BATON_ISA_BODY

template <typename T>
void rows(const T* x, const T* residual, const T* weight, T* out, T* new_residual, int64_t N,
          int64_t H, float eps) {
  const Isa isa = cpu::active_isa();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1));  // ~128 KiB per task
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__)
    if (isa >= Isa::kAvx512) return avx512::norm_rows(x, residual, weight, out, new_residual, begin, end, H, eps);
    if (isa == Isa::kAvx2) return avx2::norm_rows(x, residual, weight, out, new_residual, begin, end, H, eps);
#endif
    generic::norm_rows(x, residual, weight, out, new_residual, begin, end, H, eps);
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

const char* rms_norm_cpu_path() {
  const Isa isa = cpu::active_isa();
  return cpu::isa_name(isa >= Isa::kAvx512Bf16 ? Isa::kAvx512 : isa);
}

}  // namespace baton
