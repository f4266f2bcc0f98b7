// Tensor-facing side of the CUDA scoring ops: allocate outputs and workspaces on the input's
// device, launch the kernels (csrc/*_cuda.cu) on the current stream, check the launch.
// Built only into CUDA builds of the extension (BATON_WITH_CUDA).
#ifdef BATON_WITH_CUDA

#include "scoring.h"
#include "scoring_cuda.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace baton {
namespace {

cuda::Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return cuda::Dtype::kFloat32;
    case at::kDouble:
      return cuda::Dtype::kFloat64;
    case at::kBFloat16:
      return cuda::Dtype::kBFloat16;
    case at::kHalf:
      return cuda::Dtype::kFloat16;
    default:
      break;
  }
  TORCH_CHECK_VALUE(false, "scoring ops: unsupported dtype ", t.scalar_type());
  return cuda::Dtype::kFloat32;  // unreachable
}

}  // namespace

TokenStatsResult token_stats_cuda(const at::Tensor& logits, const at::Tensor& token_ids) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t T = logits.size(0);
  const auto opts = logits.options().dtype(at::kFloat);
  at::Tensor entropy = at::empty({T}, opts);
  at::Tensor max_prob = at::empty({T}, opts);
  at::Tensor margin = at::empty({T}, opts);
  at::Tensor logprob = at::empty({T}, opts);
  C10_CUDA_CHECK(cuda::launch_token_stats(
      logits.data_ptr(), dtype_of(logits), token_ids.data_ptr<int64_t>(), T, logits.size(1),
      entropy.data_ptr<float>(), max_prob.data_ptr<float>(), margin.data_ptr<float>(),
      logprob.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return {entropy, max_prob, margin, logprob};
}

at::Tensor attention_scores_cuda(const at::Tensor& attn, bool reduce_max) {
  const c10::cuda::CUDAGuard guard(attn.device());
  const int64_t K = attn.size(2);
  at::Tensor out = at::empty({K}, attn.options().dtype(at::kFloat));
  C10_CUDA_CHECK(cuda::launch_attention_scores(attn.data_ptr(), dtype_of(attn),
                                               attn.size(0) * attn.size(1), K, reduce_max,
                                               out.data_ptr<float>(),
                                               c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor select_tokens_cuda(const at::Tensor& scores, int64_t budget,
                              const std::optional<at::Tensor>& segment_ids, bool expand_segments) {
  const c10::cuda::CUDAGuard guard(scores.device());
  const int64_t n = scores.size(0);
  const auto long_opts = scores.options().dtype(at::kLong);
  const auto byte_opts = scores.options().dtype(at::kByte);
  if (n == 0 || budget == 0) return at::empty({0}, long_opts);
  if (!expand_segments && budget >= n) return at::arange(n, long_opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor rank = at::empty({n}, long_opts);
  at::Tensor chosen = at::zeros({n}, byte_opts);
  if (!expand_segments) {
    C10_CUDA_CHECK(cuda::launch_select_top(scores.data_ptr(), dtype_of(scores), n, budget,
                                           rank.data_ptr<int64_t>(),
                                           chosen.data_ptr<uint8_t>(), stream));
  } else {
    at::Tensor is_start = at::empty({n}, byte_opts);
    at::Tensor best = at::empty({n}, long_opts);
    at::Tensor len = at::empty({n}, long_opts);
    at::Tensor start_of = at::empty({n}, long_opts);
    at::Tensor order = at::full({n}, -1, long_opts);
    at::Tensor take = at::zeros({n}, byte_opts);
    const cuda::SegmentWorkspace ws{is_start.data_ptr<uint8_t>(), best.data_ptr<int64_t>(),
                                    len.data_ptr<int64_t>(),     start_of.data_ptr<int64_t>(),
                                    rank.data_ptr<int64_t>(),    order.data_ptr<int64_t>(),
                                    take.data_ptr<uint8_t>()};
    C10_CUDA_CHECK(cuda::launch_select_segments(scores.data_ptr(), dtype_of(scores),
                                                segment_ids->data_ptr<int64_t>(), n, budget, ws,
                                                chosen.data_ptr<uint8_t>(), stream));
  }
  return at::nonzero(chosen).view({-1});  // ascending indices: the original order
}

}  // namespace baton

#endif  // BATON_WITH_CUDA
