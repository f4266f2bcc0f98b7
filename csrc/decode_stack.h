// Every layer of a Qwen3 text decoder for one pure decode step, in one native call; see
// decode_stack.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <chrono>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace baton {

// One layer's parameters and KV cache. Biases may be undefined (no bias).
struct DecodeLayerTensors {
  at::Tensor input_norm, qkv, qkv_bias, q_norm, k_norm, o, o_bias, post_norm, gate_up, down;
  at::Tensor k_cache, v_cache;
};

// Which of the four products per layer (qkv, o, gate_up, down) run the skinny GEMM; the
// others run at::linear (kernels/cpu_routing.py measures which is faster).
using LinearRoutes = std::array<bool, 4>;

class DecodeStack {
 public:
  // Shapes: weights [out, in] as in the checkpoint (qkv and gate_up fused), norms [size],
  // caches [blocks, block_size, Hkv, head_dim]; one dtype (float32 or bfloat16), contiguous,
  // CPU. Checked here; a mismatch raises ValueError. scale: the attention's softmax scale.
  DecodeStack(std::vector<DecodeLayerTensors> layers, int64_t num_heads, int64_t num_kv_heads,
              int64_t head_dim, double eps, double scale);

  // x [B, hidden] (the token embeddings), cos/sin float32 [B, head_dim/2], slots int64 [B]
  // (< 0: store nothing), block_tables int32 [B, max_blocks], context_lens int32 [B] (keys
  // per sequence, this token included; 0: a zero row). -> (x, residual) after the last layer:
  // the decoder's output is final_norm(x + residual).
  std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& cos,
                                             const at::Tensor& sin, const at::Tensor& slots,
                                             const at::Tensor& block_tables,
                                             const at::Tensor& context_lens,
                                             LinearRoutes native) const;

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // The step's ops in the order they run; profile() reports seconds per op under these names.
  static constexpr std::array<const char*, 11> kOps = {
      "input_norm", "qkv", "qk_norm", "rotary", "kv_store", "attention",
      "o", "post_norm", "gate_up", "silu_mul", "down"};

  // Per-op wall time summed over the layers of every step since the last reset, while
  // profiling is on (off by default: then a step reads no clock). The native step is one
  // call, invisible to torch.profiler; this is how its time splits.
  void set_profiling(bool on) { profiling_ = on; }
  bool profiling() const { return profiling_; }
  std::vector<std::pair<std::string, double>> profile() const;
  int64_t profiled_steps() const { return profiled_steps_; }
  void reset_profile();

 private:
  std::vector<DecodeLayerTensors> layers_;
  // Per layer, the qkv and o biases in float32 (undefined without a bias): the skinny GEMM
  // adds them before its one rounding; converted once here, not once per step.
  std::vector<std::array<at::Tensor, 2>> bias_f32_;
  int64_t heads_, kv_heads_, head_dim_, hidden_, inter_;
  double eps_, scale_;
  bool profiling_ = false;
  mutable std::array<double, kOps.size()> op_seconds_{};
  mutable int64_t profiled_steps_ = 0;
};

}  // namespace baton
