// Native token-scoring ops: declarations shared by the CPU sources, the CUDA sources and the
// pybind11 bindings. Contracts (shapes, dtypes, edge cases) are documented on the Python
// wrappers in kernels/scoring.py; the bindings validate arguments before calling these.
#pragma once

#include <ATen/core/Tensor.h>
#include <optional>

#include <tuple>

namespace baton {

// (entropy, max_prob, margin, logprob), float32 [T] each.
using TokenStatsResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// logits: contiguous [T, V] float32 | bfloat16; token_ids: contiguous [T] int64 in [0, V).
TokenStatsResult token_stats_cpu(const at::Tensor& logits, const at::Tensor& token_ids);

// attn: contiguous [H, Q, K] float32 | bfloat16 | float16 with H * Q > 0 -> float32 [K].
at::Tensor attention_scores_cpu(const at::Tensor& attn, bool reduce_max);

// scores: contiguous [N] float32 | float64; segment_ids: contiguous [N] int64, non-decreasing.
at::Tensor select_tokens_cpu(const at::Tensor& scores, int64_t budget,
                             const std::optional<at::Tensor>& segment_ids, bool expand_segments);

#ifdef BATON_WITH_CUDA
TokenStatsResult token_stats_cuda(const at::Tensor& logits, const at::Tensor& token_ids);
at::Tensor attention_scores_cuda(const at::Tensor& attn, bool reduce_max);
at::Tensor select_tokens_cuda(const at::Tensor& scores, int64_t budget,
                              const std::optional<at::Tensor>& segment_ids, bool expand_segments);
#endif

}  // namespace baton
