// pybind11 bindings of `kernels._native`: structural argument checks, then dispatch by device.
//
// The Python wrappers in kernels/scoring.py are the public entry points and validate values
// (token id ranges, segment order, NaN scores) with user-facing messages; the checks here keep
// direct callers memory-safe.
#include <torch/extension.h>

#include "scoring.h"

namespace {

enum class Device { kCpu, kCuda };

Device device_of(const at::Tensor& t, const char* op) {
  if (t.is_cuda()) {
#ifdef BATON_WITH_CUDA
    return Device::kCuda;
#else
    TORCH_CHECK(false, op,
                ": got a CUDA tensor but kernels._native was built without CUDA; rebuild it "
                "with a CUDA build of torch and nvcc on PATH: pip install -e . "
                "--no-build-isolation");
#endif
  }
  TORCH_CHECK_VALUE(t.is_cpu(), op, ": unsupported device ", t.device(), " (cpu or cuda)");
  return Device::kCpu;
}

void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": tensors on different devices (",
                    a.device(), " and ", b.device(), ")");
}

baton::TokenStatsResult token_stats(const at::Tensor& logits, const at::Tensor& token_ids) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "token_stats: logits must be [T, V], got ",
                    logits.sizes());
  TORCH_CHECK_VALUE(logits.size(1) > 0, "token_stats: logits has an empty vocabulary");
  TORCH_CHECK_VALUE(
      logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16,
      "token_stats: logits must be float32 or bfloat16, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(token_ids.dim() == 1 && token_ids.size(0) == logits.size(0),
                    "token_stats: token_ids must be [T] with T = ", logits.size(0), ", got ",
                    token_ids.sizes());
  TORCH_CHECK_VALUE(token_ids.scalar_type() == at::kLong,
                    "token_stats: token_ids must be int64, got ", token_ids.scalar_type());
  check_same_device(logits, token_ids, "token_stats");
  const at::Tensor x = logits.contiguous();
  const at::Tensor ids = token_ids.contiguous();
#ifdef BATON_WITH_CUDA
  if (device_of(x, "token_stats") == Device::kCuda) return baton::token_stats_cuda(x, ids);
#else
  device_of(x, "token_stats");
#endif
  return baton::token_stats_cpu(x, ids);
}

at::Tensor attention_scores(const at::Tensor& attn, const std::string& reduce) {
  TORCH_CHECK_VALUE(attn.dim() == 3, "attention_scores: attn must be [H, Q, K], got ",
                    attn.sizes());
  TORCH_CHECK_VALUE(attn.size(0) * attn.size(1) > 0,
                    "attention_scores: attn has no heads or no queries: ", attn.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(attn.scalar_type()),
                    "attention_scores: attn must be a floating dtype, got ", attn.scalar_type());
  TORCH_CHECK_VALUE(reduce == "sum" || reduce == "max",
                    "attention_scores: reduce must be 'sum' or 'max', got '", reduce, "'");
  const at::Tensor a = attn.contiguous();
  const bool reduce_max = reduce == "max";
#ifdef BATON_WITH_CUDA
  if (device_of(a, "attention_scores") == Device::kCuda) {
    return baton::attention_scores_cuda(a, reduce_max);
  }
#else
  device_of(a, "attention_scores");
#endif
  return baton::attention_scores_cpu(a, reduce_max);
}

at::Tensor select_tokens(const at::Tensor& scores, int64_t budget,
                         const std::optional<at::Tensor>& segment_ids, bool expand_segments) {
  TORCH_CHECK_VALUE(scores.dim() == 1, "select_tokens: scores must be [N], got ", scores.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(scores.scalar_type()),
                    "select_tokens: scores must be a floating dtype, got ", scores.scalar_type());
  TORCH_CHECK_VALUE(budget >= 0, "select_tokens: budget must be >= 0, got ", budget);
  std::optional<at::Tensor> seg;
  if (segment_ids.has_value()) {
    const at::Tensor& s = *segment_ids;
    TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == scores.size(0),
                      "select_tokens: segment_ids must be [N] with N = ", scores.size(0),
                      ", got ", s.sizes());
    TORCH_CHECK_VALUE(s.scalar_type() == at::kLong, "select_tokens: segment_ids must be int64, got ",
                      s.scalar_type());
    check_same_device(scores, s, "select_tokens");
    seg = s.contiguous();
  }
  TORCH_CHECK_VALUE(!expand_segments || seg.has_value(),
                    "select_tokens: expand_segments=True needs segment_ids");
  // Lossless widening keeps the order (and so the ties) of half-precision scores.
  at::Tensor s = scores.scalar_type() == at::kDouble ? scores.contiguous()
                                                     : scores.to(at::kFloat).contiguous();
#ifdef BATON_WITH_CUDA
  if (device_of(s, "select_tokens") == Device::kCuda) {
    return baton::select_tokens_cuda(s, budget, seg, expand_segments);
  }
#else
  device_of(s, "select_tokens");
#endif
  return baton::select_tokens_cpu(s, budget, seg, expand_segments);
}

bool with_cuda() {
#ifdef BATON_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Baton's native token-scoring ops (see kernels/scoring.py for the contracts)";
  m.def("token_stats", &token_stats, "entropy, max_prob, margin, logprob per logits row",
        py::arg("logits"), py::arg("token_ids"));
  m.def("attention_scores", &attention_scores, "reduce attn [H, Q, K] to [K]", py::arg("attn"),
        py::arg("reduce") = "sum");
  m.def("select_tokens", &select_tokens, "budgeted, order-preserving selection",
        py::arg("scores"), py::arg("budget"), py::arg("segment_ids") = py::none(),
        py::arg("expand_segments") = false);
  m.def("with_cuda", &with_cuda, "whether the CUDA kernels were compiled in");
}
