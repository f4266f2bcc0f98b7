// RMSNorm with an optional fused residual add, on the CPU; see rms_norm_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace baton {

// The path rms_norm_cpu takes now (cpu::active_isa; avx512 at the avx512bf16 level).
const char* rms_norm_cpu_path();

// x, residual [N, H] and weight [H], contiguous, one dtype (float32 or bfloat16).
// -> (out, new_residual): new_residual = x + residual (rounded to the dtype; undefined
// without a residual), out = weight * (v * rsqrt(mean(v^2) + eps)) with v the new residual
// (or x) in float32 and the normalised value rounded to the dtype before the multiply.
std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                double eps,
                                                const std::optional<at::Tensor>& residual);

}  // namespace baton
