// pybind11 bindings of `baton.kernels._native`: structural argument checks, then dispatch by device.
// Ops: token scoring (token_stats, attention_scores, select_tokens), the CPU skinny GEMM and
// the CPU paged decode attention.
//
// The Python wrappers in kernels/scoring.py are the public entry points and validate values
// (token id ranges, segment order, NaN scores) with user-facing messages; the checks here keep
// direct callers memory-safe.
#include <torch/extension.h>

#include "amx_linear.h"
#include "cpu_elementwise.h"
#include "cpu_isa.h"
#include "decode_checks.h"
#include "decode_stack.h"
#include "paged_decode_cpu.h"
#include "rms_norm_cpu.h"
#include "scoring.h"
#include "skinny_linear.h"
#include "stream_read.h"

namespace {

enum class Device { kCpu, kCuda };

Device device_of(const at::Tensor& t, const char* op) {
  if (t.is_cuda()) {
#ifdef BATON_WITH_CUDA
    return Device::kCuda;
#else
    TORCH_CHECK(false, op,
                ": got a CUDA tensor but baton.kernels._native was built without CUDA; rebuild it "
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

// x [M, K] and w [N, K] for the skinny products (`op` names the caller in the error).
void check_skinny_shapes(const at::Tensor& x, const at::Tensor& w, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), op, ": need x [M, K] and w [N, K], got ",
                    x.sizes(), " and ", w.sizes());
}

// The bias, checked, as float32 (added before the product's one rounding).
std::optional<at::Tensor> skinny_bias(const at::Tensor& x, const at::Tensor& w,
                                      const std::optional<at::Tensor>& bias) {
  if (!bias.has_value()) return std::nullopt;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == w.size(0) &&
                        bias->scalar_type() == x.scalar_type() && bias->is_cpu(),
                    "skinny_linear: bias must be [", w.size(0), "] of x's dtype on the CPU");
  return bias->to(at::kFloat).contiguous();
}

at::Tensor skinny_linear(const at::Tensor& x, const at::Tensor& w,
                         const std::optional<at::Tensor>& bias) {
  check_skinny_shapes(x, w, "skinny_linear");
  const bool f32 = x.scalar_type() == at::kFloat &&
                   (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16);
  const bool bf16 = x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16;
  TORCH_CHECK_VALUE(f32 || bf16,
                    "skinny_linear: need x float32 with w float32 or bfloat16, or both bfloat16; "
                    "got ", x.scalar_type(), " and ", w.scalar_type());
  TORCH_CHECK_VALUE(x.is_cpu() && w.is_cpu(), "skinny_linear: CPU tensors only");
  TORCH_CHECK_VALUE(w.is_contiguous(), "skinny_linear: w must be contiguous");
  return baton::skinny_linear_cpu(x.contiguous(), w, skinny_bias(x, w, bias));
}

at::Tensor skinny_linear_amx_emulated(const at::Tensor& x, const at::Tensor& w,
                                      const std::optional<at::Tensor>& bias) {
  check_skinny_shapes(x, w, "skinny_linear_amx_emulated");
  TORCH_CHECK_VALUE(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16 && x.is_cpu() &&
                        w.is_cpu(),
                    "skinny_linear_amx_emulated: need bfloat16 CPU tensors, got ", x.scalar_type(), " and ",
                    w.scalar_type());
  return baton::amx_linear_bf16_emulated(x.contiguous(), w.contiguous(), skinny_bias(x, w, bias));
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                  const at::Tensor& v_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, double scale) {
  constexpr const char* op = "paged_decode_attention";
  TORCH_CHECK_VALUE(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
                    op, ": need q [B, Hq, D] and k/v caches [blocks, block_size, Hkv, D], got ",
                    q.sizes(), ", ", k_cache.sizes(), " and ", v_cache.sizes());
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1), Hkv = k_cache.size(2);
  TORCH_CHECK_VALUE(k_cache.size(3) == D && Hkv > 0 && Hq % Hkv == 0 && D % 8 == 0, op,
                    ": head_dim must match (a multiple of 8) and Hq a multiple of Hkv, got q ",
                    q.sizes(), " and caches ", k_cache.sizes());
  TORCH_CHECK_VALUE((q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16) &&
                        k_cache.scalar_type() == q.scalar_type() &&
                        v_cache.scalar_type() == q.scalar_type(),
                    op, ": q and the caches must share one dtype, float32 or bfloat16, got ",
                    q.scalar_type(), ", ", k_cache.scalar_type(), ", ", v_cache.scalar_type());
  TORCH_CHECK_VALUE(q.is_cpu() && k_cache.is_cpu() && v_cache.is_cpu() && block_tables.is_cpu() &&
                        context_lens.is_cpu(),
                    op, ": CPU tensors only");
  TORCH_CHECK_VALUE(k_cache.is_contiguous() && v_cache.is_contiguous(), op,
                    ": the caches must be contiguous");
  TORCH_CHECK_VALUE(block_tables.dim() == 2 && block_tables.size(0) == B &&
                        block_tables.scalar_type() == at::kInt && context_lens.dim() == 1 &&
                        context_lens.size(0) == B && context_lens.scalar_type() == at::kInt,
                    op, ": need int32 block_tables [B, max_blocks] and context_lens [B] with B = ",
                    B);
  const at::Tensor tables = block_tables.contiguous();
  const at::Tensor lens = context_lens.contiguous();
  baton::check_decode_tables(tables, lens, num_blocks, block_size, op);
  return baton::paged_decode_cpu(q.contiguous(), k_cache, v_cache, tables, lens, scale);
}

std::tuple<at::Tensor, at::Tensor> rms_norm(const at::Tensor& x, const at::Tensor& weight,
                                            double eps, const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "rms_norm";
  TORCH_CHECK_VALUE(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1), op,
                    ": need x [..., H] and weight [H], got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK_VALUE((x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
                        weight.scalar_type() == x.scalar_type(),
                    op, ": x and weight must share one dtype, float32 or bfloat16, got ",
                    x.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK_VALUE(x.is_cpu() && weight.is_cpu(), op, ": CPU tensors only");
  std::optional<at::Tensor> r;
  if (residual.has_value()) {
    TORCH_CHECK_VALUE(residual->sizes() == x.sizes() && residual->scalar_type() == x.scalar_type() &&
                          residual->is_cpu(),
                      op, ": residual must match x (", x.sizes(), ", ", x.scalar_type(), ")");
    r = residual->contiguous();
  }
  return baton::rms_norm_cpu(x.contiguous(), weight.contiguous(), eps, r);
}

bool float_or_bf16(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
}

void apply_rotary_(at::Tensor q, at::Tensor k, const at::Tensor& cos, const at::Tensor& sin) {
  constexpr const char* op = "apply_rotary_";
  TORCH_CHECK_VALUE(cos.dim() == 2 && sin.sizes() == cos.sizes() && cos.scalar_type() == at::kFloat &&
                        sin.scalar_type() == at::kFloat,
                    op, ": cos and sin must be float32 [N, D/2], got ", cos.sizes(), " and ", sin.sizes());
  for (at::Tensor* x : {&q, &k}) {
    TORCH_CHECK_VALUE(x->dim() == 3 && x->size(0) == cos.size(0) && x->size(2) == 2 * cos.size(1) &&
                          x->stride(2) == 1 && float_or_bf16(*x) && x->is_cpu(),
                      op, ": q and k must be float32 or bfloat16 CPU [N, H, ", 2 * cos.size(1),
                      "] with a contiguous last dimension, got ", x->sizes(), " strides ", x->strides());
  }
  TORCH_CHECK_VALUE(cos.is_cpu() && sin.is_cpu(), op, ": CPU tensors only");
  const at::Tensor c = cos.contiguous(), s = sin.contiguous();
  baton::rotary_cpu_(q, c, s);
  baton::rotary_cpu_(k, c, s);
}

void store_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor k_cache, at::Tensor v_cache,
              const at::Tensor& slot_mapping) {
  constexpr const char* op = "store_kv";
  TORCH_CHECK_VALUE(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes() && k_cache.is_contiguous() &&
                        v_cache.is_contiguous() && k_cache.is_cpu() && v_cache.is_cpu() &&
                        v_cache.scalar_type() == k_cache.scalar_type(),
                    op, ": caches must be contiguous CPU [blocks, block_size, Hkv, D] of one dtype");
  const int64_t N = k.size(0);
  for (const at::Tensor* x : {&k, &v}) {
    TORCH_CHECK_VALUE(x->dim() == 3 && x->size(0) == N && x->size(1) == k_cache.size(2) &&
                          x->size(2) == k_cache.size(3) && x->scalar_type() == k_cache.scalar_type() &&
                          x->is_cpu(),
                      op, ": k and v must be [N, ", k_cache.size(2), ", ", k_cache.size(3), "] ",
                      k_cache.scalar_type(), " on the CPU, got ", x->sizes(), " ", x->scalar_type());
  }
  TORCH_CHECK_VALUE(slot_mapping.dim() == 1 && slot_mapping.size(0) == N &&
                        slot_mapping.scalar_type() == at::kLong && slot_mapping.is_cpu(),
                    op, ": slot_mapping must be int64 [", N, "] on the CPU");
  const at::Tensor slots = slot_mapping.contiguous();
  baton::check_slots(slots, k_cache.size(0) * k_cache.size(1), op);
  baton::store_kv_cpu(k.contiguous(), v.contiguous(), k_cache, v_cache, slots);
}

// layers: per layer [input_norm, qkv, qkv_bias, q_norm, k_norm, o, o_bias, post_norm, gate_up,
// down, k_cache, v_cache], biases None where absent.
baton::DecodeStack make_decode_stack(const std::vector<std::vector<std::optional<at::Tensor>>>& layers,
                                     int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double eps,
                                     double scale) {
  std::vector<baton::DecodeLayerTensors> out;
  out.reserve(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    TORCH_CHECK_VALUE(l.size() == 12, "DecodeStack: layer ", i, " needs 12 entries, got ", l.size());
    auto get = [&](size_t j) { return l[j].has_value() ? *l[j] : at::Tensor(); };
    out.push_back({get(0), get(1), get(2), get(3), get(4), get(5), get(6), get(7), get(8), get(9), get(10),
                   get(11)});
  }
  return baton::DecodeStack(std::move(out), num_heads, num_kv_heads, head_dim, eps, scale);
}

std::string cpu_isa() { return baton::cpu::isa_name(baton::cpu::active_isa()); }

std::string cpu_isa_detected() { return baton::cpu::isa_name(baton::cpu::detected_isa()); }

std::string cpu_isa_default() { return baton::cpu::isa_name(baton::cpu::default_isa()); }

void set_cpu_isa(const std::string& name) { baton::cpu::set_active_isa(baton::cpu::parse_isa(name)); }

std::map<std::string, bool> cpu_features() {
  std::map<std::string, bool> out;
  for (const auto& [name, present] : baton::cpu::cpu_features()) out[name] = present;
  return out;
}

std::map<std::string, std::string> cpu_kernel_paths() {
  return {{"skinny_linear_float32", baton::skinny_linear_path(false)},
          {"skinny_linear_bfloat16", baton::skinny_linear_path(true)},
          {"paged_decode_attention", baton::paged_decode_cpu_path()},
          {"rms_norm", baton::rms_norm_cpu_path()}};
}

bool with_cuda() {
#ifdef BATON_WITH_CUDA
  return true;
#else
  return false;
#endif
}

uint32_t stream_read_sum(const at::Tensor& x, int64_t streams) {
  TORCH_CHECK_VALUE(x.is_cpu() && x.is_contiguous(), "stream_read_sum: x must be a contiguous CPU tensor");
  TORCH_CHECK_VALUE(streams == 1 || streams == 2 || streams == 4 || streams == 8,
                    "stream_read_sum: streams must be 1, 2, 4 or 8, got ", streams);
  return baton::stream_read_sum(x, streams);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Baton's native ops: token scoring (kernels/scoring.py), the CPU skinny GEMM "
            "(kernels/linear.py) and CPU paged decode attention (kernels/paged_decode_cpu.py)";
  m.def("token_stats", &token_stats, "entropy, max_prob, margin, logprob per logits row",
        py::arg("logits"), py::arg("token_ids"));
  m.def("attention_scores", &attention_scores, "reduce attn [H, Q, K] to [K]", py::arg("attn"),
        py::arg("reduce") = "sum");
  m.def("select_tokens", &select_tokens, "budgeted, order-preserving selection",
        py::arg("scores"), py::arg("budget"), py::arg("segment_ids") = py::none(),
        py::arg("expand_segments") = false);
  m.def("skinny_linear", &skinny_linear,
        "x [M, K] @ w[N, K]^T (+ bias) on the CPU, y in x's dtype: x float32 with w float32 "
        "or bfloat16, or both bfloat16",
        py::arg("x"), py::arg("w"), py::arg("bias") = py::none());
  m.def("skinny_linear_amx_emulated", &skinny_linear_amx_emulated,
        "skinny_linear's AMX kernel on emulated tiles (any CPU; slow; for tests)", py::arg("x"),
        py::arg("w"), py::arg("bias") = py::none());
  m.def("skinny_linear_supported", &baton::skinny_linear_supported,
        "whether skinny_linear runs here (always; see cpu_isa)");
  m.def("paged_decode_attention", &paged_decode_attention,
        "CPU paged decode attention: q [B, Hq, D] over k/v caches through block tables",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("block_tables"),
        py::arg("context_lens"), py::arg("scale"));
  m.def("paged_decode_supported", &baton::paged_decode_cpu_supported,
        "whether paged_decode_attention runs here (always; see cpu_isa)");
  m.def("rms_norm", &rms_norm, "CPU RMSNorm with optional fused residual add -> (out, new_residual)",
        py::arg("x"), py::arg("weight"), py::arg("eps"), py::arg("residual") = py::none());
  m.def("apply_rotary_", &apply_rotary_, "CPU rotate-half rotary of q [N, Hq, D] and k [N, Hkv, D] in place",
        py::arg("q"), py::arg("k"), py::arg("cos"), py::arg("sin"));
  m.def("store_kv", &store_kv, "CPU paged KV-cache store: token i to slot slot_mapping[i] (< 0: skip)",
        py::arg("k"), py::arg("v"), py::arg("k_cache"), py::arg("v_cache"), py::arg("slot_mapping"));
  py::class_<baton::DecodeStack>(m, "DecodeStack",
                                 "every layer of a Qwen3 text decoder for one CPU decode step "
                                 "(models/native_decode.py)")
      .def(py::init(&make_decode_stack), py::arg("layers"), py::arg("num_heads"), py::arg("num_kv_heads"),
           py::arg("head_dim"), py::arg("eps"), py::arg("scale"))
      .def("forward", &baton::DecodeStack::forward,
           "(x [B, hidden], cos, sin, slots, block_tables, context_lens, native: 4 bools) -> "
           "(x, residual) after the last layer",
           py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("slots"), py::arg("block_tables"),
           py::arg("context_lens"), py::arg("native"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_layers", &baton::DecodeStack::num_layers)
      .def_property("profiling", &baton::DecodeStack::profiling, &baton::DecodeStack::set_profiling,
                    "time each op of every step (off by default; see profile())")
      .def("profile", &baton::DecodeStack::profile,
           "[(op, seconds summed over layers and profiled steps)] in the order a layer runs them")
      .def_property_readonly("profiled_steps", &baton::DecodeStack::profiled_steps)
      .def("reset_profile", &baton::DecodeStack::reset_profile);
  m.def("stream_read_sum", &stream_read_sum,
        "sum mod 2^32 of a CPU tensor's bytes as 32-bit words, each thread reading its share as "
        "`streams` runs side by side (the benches' read floor)",
        py::arg("x"), py::arg("streams"), py::call_guard<py::gil_scoped_release>());
  m.def("cpu_isa", &cpu_isa, "the instruction-set path the CPU kernels run now");
  m.def("cpu_isa_detected", &cpu_isa_detected, "the best instruction-set path this CPU runs");
  m.def("cpu_isa_default", &cpu_isa_default,
        "the path a process starts on (the detected one, but amx is opt-in)");
  m.def("cpu_isa_levels", &baton::cpu::runnable_isas, "every path this CPU runs, lowest first");
  m.def("set_cpu_isa", &set_cpu_isa,
        "run the CPU kernels on this path (generic, avx2, avx512, avx512bf16, amx); ValueError when "
        "the CPU lacks it", py::arg("name"));
  m.def("cpu_features", &cpu_features, "CPU features relevant to the kernel paths");
  m.def("cpu_kernel_paths", &cpu_kernel_paths, "the path each CPU kernel takes now");
  m.def("with_cuda", &with_cuda, "whether the CUDA kernels were compiled in");
}
