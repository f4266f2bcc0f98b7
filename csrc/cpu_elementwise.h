// Decode-step elementwise ops on the CPU (rotary, KV-cache store); see
// cpu_elementwise.cpp.
#pragma once

#include <ATen/core/Tensor.h>

namespace baton {

// In place: x [N, H, D] (any strides but a contiguous last dimension), float32 or bfloat16;
// cos, sin contiguous float32 [N, D/2]. Rotate-half in float32, one rounding to x's dtype.
void rotary_cpu_(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// k, v contiguous [N, Hkv, D] in the caches' dtype; caches contiguous
// [blocks, block_size, Hkv, D]; slots int64 [N] (negative: skip). Slots validated by the caller.
void store_kv_cpu(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                  at::Tensor& v_cache, const at::Tensor& slots);

}  // namespace baton
