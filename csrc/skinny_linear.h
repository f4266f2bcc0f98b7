// Skinny GEMM for the CPU linear layers (few rows, e.g. decode steps); see skinny_linear.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <optional>

namespace baton {

// Whether this build runs the kernel here (always: the generic path is portable).
bool skinny_linear_supported();

// The path skinny_linear_cpu takes now for weights of this dtype (cpu::active_isa, except
// that float32 weights run avx512 from the avx512bf16 level up, and that amx takes only
// kAmxMinRows..kAmxMaxRows input rows, amx_linear.h).
const char* skinny_linear_path(bool bf16);

// x: contiguous [M, K], float32 (w float32 or bfloat16) or bfloat16 (w bfloat16);
// w: contiguous [N, K]; bias: contiguous float32 [N] or none.
// -> y [M, N] in x's dtype = x @ w^T (+ bias), accumulated in float32 and rounded once.
// The bindings validate the arguments.
at::Tensor skinny_linear_cpu(const at::Tensor& x, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias);

}  // namespace baton
