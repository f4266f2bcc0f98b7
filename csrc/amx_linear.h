// bfloat16 skinny GEMM on AMX tiles (Isa::kAmx); see amx_linear.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <optional>

namespace baton {

// Input rows the AMX path takes: from a tile's worth of pairs being worth loading (below, the
// GEMV-like row tiles read the same weight bytes with no packing) up to four tiles of input
// rows (batched decode; the packed inputs stay in L2). Not measured yet: no AMX CPU has run it.
constexpr int64_t kAmxMinRows = 4;
constexpr int64_t kAmxMaxRows = 64;

// y[:, :N16] = x @ w[:N16]^T (+ bias) for N16 = N rounded down to 16 rows, on AMX tiles;
// returns N16 (the caller computes rows N16..N-1). x [M, K], w [N, K], y [M, N] bfloat16,
// contiguous; bias float32 [N] or null. Needs cpu::detected_isa() >= Isa::kAmx.
int64_t amx_linear_bf16(const c10::BFloat16* x, int64_t M, const c10::BFloat16* w, int64_t K,
                        const float* bias, c10::BFloat16* y, int64_t N);

// The same kernel on emulated tiles (amx_tiles.h), rows N16..N-1 by a plain loop: runs on any
// CPU, for tests. x, w bfloat16 [M, K] / [N, K]; bias float32 [N] or none.
at::Tensor amx_linear_bf16_emulated(const at::Tensor& x, const at::Tensor& w,
                                    const std::optional<at::Tensor>& bias);

}  // namespace baton
