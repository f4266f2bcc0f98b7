// Skinny GEMM for the CPU linear layers (few rows, e.g. decode steps); see skinny_linear.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <optional>

namespace baton {

// Whether this CPU runs the kernel (x86-64 with AVX2 and FMA).
bool skinny_linear_supported();

// x: contiguous [M, K] float32; w: contiguous [N, K] float32 or bfloat16; bias: contiguous [N]
// float32. -> float32 y [M, N] = x @ w^T (+ bias). The bindings validate the arguments.
at::Tensor skinny_linear_cpu(const at::Tensor& x, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias);

}  // namespace baton
