// Budgeted, order-preserving token selection on CUDA; same rule as csrc/select_tokens.cpp.
//
// Ranking is exact and deterministic: item i's rank is the number of items that beat it under
// (score descending, index ascending), counted by one thread per item over shared-memory
// tiles. That is O(N^2 / threads) work: microseconds to a few milliseconds for reasoning
// spans of up to tens of thousands of tokens, with no sort and no atomics.
// Without segments: a token is chosen when its rank is below the budget.
// With segments: each run of equal segment ids is summarised at its first token (length,
// best token), segments are ranked by their best token, one thread walks them in rank order
// taking each that still fits, and tokens inherit their segment's decision.
// The host side (csrc/scoring_cuda.cpp) compacts the chosen mask in index order.
#include <cuda_runtime.h>

#include <cstdint>

#include "scoring_cuda.h"

namespace baton {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__device__ __forceinline__ bool beats(scalar_t s_a, int64_t a, scalar_t s_b, int64_t b) {
  return s_a > s_b || (s_a == s_b && a < b);
}

__device__ __forceinline__ bool is_segment_start(const int64_t* seg, int64_t i) {
  return i == 0 || seg[i] != seg[i - 1];
}

__device__ __forceinline__ int64_t global_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// rank[i] = how many active items beat active item i. Item j stands for token key[j]
// (token j itself when key is null); inactive items (active[j] == 0) are skipped.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    rank_kernel(const scalar_t* __restrict__ scores, const int64_t* __restrict__ key,
                const uint8_t* __restrict__ active, int64_t n, int64_t* __restrict__ rank) {
  __shared__ scalar_t tile_score[kThreads];
  __shared__ int64_t tile_token[kThreads];
  const int64_t i = global_index();
  const bool mine = i < n && (active == nullptr || active[i]);
  const int64_t my_token = mine ? (key ? key[i] : i) : 0;
  const scalar_t my_score = mine ? scores[my_token] : scalar_t(0);
  int64_t count = 0;
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    int64_t token = -1;  // -1 marks a padding or inactive slot
    if (j < n && (active == nullptr || active[j])) token = key ? key[j] : j;
    tile_token[threadIdx.x] = token;
    tile_score[threadIdx.x] = token >= 0 ? scores[token] : scalar_t(0);
    __syncthreads();
    if (mine) {
      for (int t = 0; t < kThreads; ++t) {
        const int64_t other = tile_token[t];
        count += other >= 0 && beats(tile_score[t], other, my_score, my_token);
      }
    }
    __syncthreads();
  }
  if (mine) rank[i] = count;
}

__global__ void mark_ranked(const int64_t* __restrict__ rank, int64_t n, int64_t budget,
                            uint8_t* __restrict__ chosen) {
  const int64_t i = global_index();
  if (i < n) chosen[i] = rank[i] < budget;
}

// For every segment start i: best[i] (its best token) and len[i]; for every token: the start
// of its segment. One thread walks each segment.
template <typename scalar_t>
__global__ void segment_info(const scalar_t* __restrict__ scores, const int64_t* __restrict__ seg,
                             int64_t n, uint8_t* __restrict__ is_start,
                             int64_t* __restrict__ best, int64_t* __restrict__ len,
                             int64_t* __restrict__ start_of) {
  const int64_t i = global_index();
  if (i >= n) return;
  const bool start = is_segment_start(seg, i);
  is_start[i] = start;
  if (!start) return;
  int64_t b = i;
  int64_t j = i;
  for (; j < n && (j == i || !is_segment_start(seg, j)); ++j) {
    if (beats(scores[j], j, scores[b], b)) b = j;
    start_of[j] = i;
  }
  best[i] = b;
  len[i] = j - i;
}

__global__ void order_segments(const int64_t* __restrict__ rank,
                               const uint8_t* __restrict__ is_start, int64_t n,
                               int64_t* __restrict__ order) {
  const int64_t i = global_index();
  if (i < n && is_start[i]) order[rank[i]] = i;  // ranks of starts are 0 .. segments - 1
}

// Greedy fill, sequential by nature: take each segment, best first, when it still fits.
__global__ void take_segments(const int64_t* __restrict__ order, const int64_t* __restrict__ len,
                              int64_t n, int64_t budget, uint8_t* __restrict__ take) {
  int64_t remaining = budget;
  for (int64_t r = 0; r < n && remaining > 0; ++r) {
    const int64_t start = order[r];
    if (start < 0) break;  // past the last segment
    if (len[start] <= remaining) {
      take[start] = 1;
      remaining -= len[start];
    }
  }
}

__global__ void mark_segments(const int64_t* __restrict__ start_of,
                              const uint8_t* __restrict__ take, int64_t n,
                              uint8_t* __restrict__ chosen) {
  const int64_t i = global_index();
  if (i < n) chosen[i] = take[start_of[i]];
}

unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

template <typename scalar_t>
cudaError_t select_top(const scalar_t* s, int64_t n, int64_t budget, int64_t* rank,
                       uint8_t* chosen, cudaStream_t stream) {
  rank_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(s, nullptr, nullptr, n, rank);
  mark_ranked<<<blocks_for(n), kThreads, 0, stream>>>(rank, n, budget, chosen);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t select_segments(const scalar_t* s, const int64_t* seg, int64_t n, int64_t budget,
                            const SegmentWorkspace& ws, uint8_t* chosen, cudaStream_t stream) {
  const unsigned int blocks = blocks_for(n);
  segment_info<scalar_t><<<blocks, kThreads, 0, stream>>>(s, seg, n, ws.is_start, ws.best,
                                                          ws.len, ws.start_of);
  rank_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(s, ws.best, ws.is_start, n, ws.rank);
  order_segments<<<blocks, kThreads, 0, stream>>>(ws.rank, ws.is_start, n, ws.order);
  take_segments<<<1, 1, 0, stream>>>(ws.order, ws.len, n, budget, ws.take);
  mark_segments<<<blocks, kThreads, 0, stream>>>(ws.start_of, ws.take, n, chosen);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_select_top(const void* scores, Dtype dtype, int64_t n, int64_t budget,
                              int64_t* rank, uint8_t* chosen, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n / kThreads >= 0x7fffffff) return cudaErrorInvalidValue;
  if (dtype == Dtype::kFloat64) {
    return select_top(static_cast<const double*>(scores), n, budget, rank, chosen, stream);
  }
  if (dtype == Dtype::kFloat32) {
    return select_top(static_cast<const float*>(scores), n, budget, rank, chosen, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_select_segments(const void* scores, Dtype dtype, const int64_t* seg,
                                   int64_t n, int64_t budget, const SegmentWorkspace& ws,
                                   uint8_t* chosen, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n / kThreads >= 0x7fffffff) return cudaErrorInvalidValue;
  if (dtype == Dtype::kFloat64) {
    return select_segments(static_cast<const double*>(scores), seg, n, budget, ws, chosen,
                           stream);
  }
  if (dtype == Dtype::kFloat32) {
    return select_segments(static_cast<const float*>(scores), seg, n, budget, ws, chosen,
                           stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace baton
