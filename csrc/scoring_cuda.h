// Launchers of the CUDA scoring kernels (csrc/*_cuda.cu). Raw pointers only: the .cu files
// include no ATen headers, so they compile in seconds; csrc/scoring_cuda.cpp adapts tensors.
// Each launcher enqueues on `stream` and returns cudaGetLastError().
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace baton {
namespace cuda {

enum class Dtype { kFloat32, kFloat64, kBFloat16, kFloat16 };

// logits [T, V] row-major (float32 or bfloat16), ids [T] -> four float32 [T] outputs.
cudaError_t launch_token_stats(const void* logits, Dtype dtype, const int64_t* ids, int64_t T,
                               int64_t V, float* entropy, float* max_prob, float* margin,
                               float* logprob, cudaStream_t stream);

// attn [rows, K] row-major (rows = H * Q > 0) -> out float32 [K].
cudaError_t launch_attention_scores(const void* attn, Dtype dtype, int64_t rows, int64_t K,
                                    bool reduce_max, float* out, cudaStream_t stream);

// Token ranking (float32 or float64 scores [n]): chosen[i] = 1 for the `budget` best tokens.
// rank: workspace of n int64.
cudaError_t launch_select_top(const void* scores, Dtype dtype, int64_t n, int64_t budget,
                              int64_t* rank, uint8_t* chosen, cudaStream_t stream);

// Workspace of launch_select_segments, n entries each. `order` must be filled with -1 and
// `take` and `chosen` with 0 before the launch.
struct SegmentWorkspace {
  uint8_t* is_start;
  int64_t* best;
  int64_t* len;
  int64_t* start_of;
  int64_t* rank;
  int64_t* order;
  uint8_t* take;
};

// Whole-segment selection (segments are runs of equal ids in seg [n]); see select_tokens.cpp.
cudaError_t launch_select_segments(const void* scores, Dtype dtype, const int64_t* seg,
                                   int64_t n, int64_t budget, const SegmentWorkspace& ws,
                                   uint8_t* chosen, cudaStream_t stream);

}  // namespace cuda
}  // namespace baton
