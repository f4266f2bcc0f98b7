// Paged decode attention on the CPU; see paged_decode_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

namespace baton {

// Whether this build runs the kernel here (always: the generic path is portable).
bool paged_decode_cpu_supported();

// The path paged_decode_cpu takes now (cpu::active_isa; avx512 at the avx512bf16 level).
const char* paged_decode_cpu_path();

// q [B, Hq, D]; k_cache, v_cache [num_blocks, block_size, Hkv, D], contiguous, q's dtype
// (float32 or bfloat16); block_tables int32 [B, max_blocks]; context_lens int32 [B].
// D % 8 == 0, Hq % Hkv == 0. -> [B, Hq, D] in q's dtype. The bindings validate the
// arguments, block ids included.
at::Tensor paged_decode_cpu(const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables,
                            const at::Tensor& context_lens, double scale);

}  // namespace baton
