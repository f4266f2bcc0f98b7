// Every layer of a Qwen3 text decoder for one pure decode step, in one native call.
//
// A decode step runs about 14 ops per layer. Called from Python, each costs a module call, a
// routing check and a binding crossing: on a 28-layer model with hidden size 128 that was
// 14 ms per step on one thread, most of it Python, which at bench-0.5b size is a fifth of
// the bandwidth floor. Here the same kernels run in the same order (RMSNorm, the fused qkv
// product, QK-norm, rotary, the KV store, paged attention, o, the fused residual + RMSNorm,
// gate_up, SiLU-and-mul, down), so the result is bit for bit the eager path's; only the
// Python between them is gone, and the GIL is released for the whole step. Shapes and the
// step's block tables and slots are checked once per step, not once per layer.
#include "decode_stack.h"

#include <ATen/ops/linear.h>
#include <ATen/ops/silu.h>
#include <c10/util/Exception.h>

#include <optional>

#include "cpu_elementwise.h"
#include "decode_checks.h"
#include "paged_decode_cpu.h"
#include "rms_norm_cpu.h"
#include "skinny_linear.h"

namespace baton {
namespace {

constexpr const char* kOp = "DecodeStack";

void check_param(const at::Tensor& t, at::IntArrayRef shape, at::ScalarType dtype, const char* name,
                 size_t layer) {
  TORCH_CHECK_VALUE(t.defined(), kOp, ": layer ", layer, " has no ", name);
  TORCH_CHECK_VALUE(t.sizes() == shape && t.scalar_type() == dtype && t.is_cpu() && t.is_contiguous(),
                    kOp, ": layer ", layer, " ", name, " must be a contiguous CPU ", dtype, " tensor of shape ",
                    shape, ", got ", t.sizes(), " ", t.scalar_type(), t.is_contiguous() ? "" : " (strided)");
}

std::optional<at::Tensor> opt(const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; }

// As ops.linear routes it: the skinny GEMM (bias in float32, added before its one rounding, as
// the skinny_linear binding does) or at::linear (bias in the weights' dtype).
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& bias_f32,
                  bool native) {
  if (native) return skinny_linear_cpu(x.contiguous(), w, opt(bias_f32));
  return at::linear(x, w, opt(bias));
}

}  // namespace

DecodeStack::DecodeStack(std::vector<DecodeLayerTensors> layers, int64_t num_heads, int64_t num_kv_heads,
                         int64_t head_dim, double eps, double scale)
    : layers_(std::move(layers)), heads_(num_heads), kv_heads_(num_kv_heads), head_dim_(head_dim), eps_(eps),
      scale_(scale) {
  TORCH_CHECK_VALUE(!layers_.empty(), kOp, ": no layers");
  TORCH_CHECK_VALUE(heads_ > 0 && kv_heads_ > 0 && heads_ % kv_heads_ == 0 && head_dim_ > 0 && head_dim_ % 8 == 0,
                    kOp, ": need heads a multiple of kv_heads and head_dim a multiple of 8, got ", heads_, ", ",
                    kv_heads_, ", ", head_dim_);
  const DecodeLayerTensors& first = layers_[0];
  TORCH_CHECK_VALUE(first.input_norm.defined() && first.gate_up.defined() && first.gate_up.dim() == 2 &&
                        first.k_cache.defined() && first.k_cache.dim() == 4,
                    kOp, ": layer 0 needs input_norm, gate_up [2I, hidden] and k_cache [blocks, block_size, Hkv, D]");
  const at::ScalarType dtype = first.input_norm.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16, kOp, ": float32 or bfloat16 weights, got ", dtype);
  hidden_ = first.input_norm.numel();
  inter_ = first.gate_up.size(0) / 2;
  const int64_t q = heads_ * head_dim_, kv = kv_heads_ * head_dim_;
  const std::vector<int64_t> cache_shape = {first.k_cache.size(0), first.k_cache.size(1), kv_heads_, head_dim_};
  for (size_t i = 0; i < layers_.size(); ++i) {
    const DecodeLayerTensors& l = layers_[i];
    check_param(l.input_norm, {hidden_}, dtype, "input_norm", i);
    check_param(l.qkv, {q + 2 * kv, hidden_}, dtype, "qkv", i);
    if (l.qkv_bias.defined()) check_param(l.qkv_bias, {q + 2 * kv}, dtype, "qkv_bias", i);
    check_param(l.q_norm, {head_dim_}, dtype, "q_norm", i);
    check_param(l.k_norm, {head_dim_}, dtype, "k_norm", i);
    check_param(l.o, {hidden_, q}, dtype, "o", i);
    if (l.o_bias.defined()) check_param(l.o_bias, {hidden_}, dtype, "o_bias", i);
    check_param(l.post_norm, {hidden_}, dtype, "post_norm", i);
    check_param(l.gate_up, {2 * inter_, hidden_}, dtype, "gate_up", i);
    check_param(l.down, {hidden_, inter_}, dtype, "down", i);
    check_param(l.k_cache, cache_shape, dtype, "k_cache", i);
    check_param(l.v_cache, cache_shape, dtype, "v_cache", i);
    auto f32 = [](const at::Tensor& b) { return b.defined() ? b.to(at::kFloat).contiguous() : at::Tensor(); };
    bias_f32_.push_back({f32(l.qkv_bias), f32(l.o_bias)});
  }
}

std::tuple<at::Tensor, at::Tensor> DecodeStack::forward(const at::Tensor& x, const at::Tensor& cos,
                                                        const at::Tensor& sin, const at::Tensor& slots,
                                                        const at::Tensor& block_tables,
                                                        const at::Tensor& context_lens, LinearRoutes native) const {
  const DecodeLayerTensors& first = layers_[0];
  const at::ScalarType dtype = first.input_norm.scalar_type();
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) > 0 && x.size(1) == hidden_ && x.scalar_type() == dtype && x.is_cpu(),
                    kOp, ": x must be a CPU ", dtype, " tensor [B, ", hidden_, "], got ", x.sizes(), " ",
                    x.scalar_type());
  const int64_t B = x.size(0), half = head_dim_ / 2;
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == B && t->size(1) == half && t->scalar_type() == at::kFloat &&
                          t->is_cpu(),
                      kOp, ": cos and sin must be float32 CPU [", B, ", ", half, "], got ", t->sizes(), " ",
                      t->scalar_type());
  TORCH_CHECK_VALUE(slots.dim() == 1 && slots.size(0) == B && slots.scalar_type() == at::kLong && slots.is_cpu(),
                    kOp, ": slot_mapping must be int64 [", B, "] on the CPU");
  TORCH_CHECK_VALUE(block_tables.dim() == 2 && block_tables.size(0) == B && block_tables.scalar_type() == at::kInt &&
                        context_lens.dim() == 1 && context_lens.size(0) == B &&
                        context_lens.scalar_type() == at::kInt && block_tables.is_cpu() && context_lens.is_cpu(),
                    kOp, ": need int32 block_tables [B, max_blocks] and context_lens [B] with B = ", B);
  const at::Tensor c = cos.contiguous(), s = sin.contiguous(), sl = slots.contiguous();
  const at::Tensor tables = block_tables.contiguous(), lens = context_lens.contiguous();
  const int64_t num_blocks = first.k_cache.size(0), block_size = first.k_cache.size(1);
  check_slots(sl, num_blocks * block_size, kOp);
  check_decode_tables(tables, lens, num_blocks, block_size, kOp);

  const int64_t q = heads_ * head_dim_, kv = kv_heads_ * head_dim_;
  // Profiling: `lap(op)` charges the time since the previous lap to op (kOps order).
  using Clock = std::chrono::steady_clock;
  Clock::time_point last = profiling_ ? Clock::now() : Clock::time_point();
  auto lap = [&](size_t op) {
    if (!profiling_) return;
    const Clock::time_point now = Clock::now();
    op_seconds_[op] += std::chrono::duration<double>(now - last).count();
    last = now;
  };
  at::Tensor h, residual, out = x.contiguous();  // the first residual is x itself: the kernels read it flat
  for (size_t i = 0; i < layers_.size(); ++i) {
    const DecodeLayerTensors& l = layers_[i];
    const auto& [qkv_bias_f32, o_bias_f32] = bias_f32_[i];
    if (!residual.defined()) {
      residual = out;
      h = std::get<0>(rms_norm_cpu(out, l.input_norm, eps_, std::nullopt));
    } else {
      std::tie(h, residual) = rms_norm_cpu(out, l.input_norm, eps_, residual);
    }
    lap(0);
    const at::Tensor qkv = linear(h, l.qkv, l.qkv_bias, qkv_bias_f32, native[0]);
    lap(1);
    at::Tensor qh = std::get<0>(rms_norm_cpu(qkv.narrow(1, 0, q).reshape({B * heads_, head_dim_}).contiguous(),
                                             l.q_norm, eps_, std::nullopt))
                        .view({B, heads_, head_dim_});
    at::Tensor kh = std::get<0>(rms_norm_cpu(qkv.narrow(1, q, kv).reshape({B * kv_heads_, head_dim_}).contiguous(),
                                             l.k_norm, eps_, std::nullopt))
                        .view({B, kv_heads_, head_dim_});
    const at::Tensor vh = qkv.narrow(1, q + kv, kv).reshape({B, kv_heads_, head_dim_}).contiguous();
    lap(2);
    rotary_cpu_(qh, c, s);
    rotary_cpu_(kh, c, s);
    lap(3);
    at::Tensor k_cache = l.k_cache, v_cache = l.v_cache;
    store_kv_cpu(kh, vh, k_cache, v_cache, sl);
    lap(4);
    const at::Tensor attn = paged_decode_cpu(qh, k_cache, v_cache, tables, lens, scale_);
    lap(5);
    const at::Tensor o = linear(attn.view({B, q}), l.o, l.o_bias, o_bias_f32, native[1]);
    lap(6);
    std::tie(h, residual) = rms_norm_cpu(o.contiguous(), l.post_norm, eps_, residual);
    lap(7);
    const at::Tensor gate_up = linear(h, l.gate_up, at::Tensor(), at::Tensor(), native[2]);
    lap(8);
    const at::Tensor act = at::silu(gate_up.narrow(1, 0, inter_)).mul_(gate_up.narrow(1, inter_, inter_));
    lap(9);
    out = linear(act, l.down, at::Tensor(), at::Tensor(), native[3]);
    lap(10);
  }
  if (profiling_) ++profiled_steps_;
  return {out, residual};
}

std::vector<std::pair<std::string, double>> DecodeStack::profile() const {
  std::vector<std::pair<std::string, double>> out;
  for (size_t i = 0; i < kOps.size(); ++i) out.emplace_back(kOps[i], op_seconds_[i]);
  return out;
}

void DecodeStack::reset_profile() {
  op_seconds_.fill(0.0);
  profiled_steps_ = 0;
}

}  // namespace baton
