// Attention-mass scores on CUDA: reduce attn [H, Q, K] over heads and queries to [K].
//
// A block owns kCols consecutive keys; its kRowGroups warps walk interleaved rows, each
// warp reading kCols contiguous values per row (coalesced), and the row groups combine in
// shared memory in a fixed order, so results are deterministic. Sums accumulate in float32.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "scoring_cuda.h"

namespace baton {
namespace cuda {
namespace {

constexpr int kCols = 32;
constexpr int kRowGroups = 8;

// bfloat16 travels as its bits (uint16_t): the top half of a float32.
struct Bf16Bits {
  uint16_t bits;
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(Bf16Bits x) {
  return __uint_as_float(static_cast<uint32_t>(x.bits) << 16);
}

template <bool kMax>
__device__ __forceinline__ float combine(float acc, float v) {
  if (kMax) return (v > acc || v != v) ? v : acc;  // once NaN, stays NaN (like torch.amax)
  return acc + v;
}

template <typename scalar_t, bool kMax>
__global__ void __launch_bounds__(kCols * kRowGroups)
    attention_scores_kernel(const scalar_t* __restrict__ attn, int64_t rows, int64_t K,
                            float* __restrict__ out) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  float acc = kMax ? -INFINITY : 0.0f;
  if (k < K) {
    for (int64_t r = threadIdx.y; r < rows; r += kRowGroups) {
      acc = combine<kMax>(acc, to_float(attn[r * K + k]));
    }
  }
  __shared__ float partial[kRowGroups][kCols];
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || k >= K) return;
#pragma unroll
  for (int g = 1; g < kRowGroups; ++g) acc = combine<kMax>(acc, partial[g][threadIdx.x]);
  out[k] = acc;
}

template <typename scalar_t>
void launch(const void* attn, int64_t rows, int64_t K, bool reduce_max, float* out,
            cudaStream_t stream) {
  const dim3 block(kCols, kRowGroups);
  const dim3 grid(static_cast<unsigned int>((K + kCols - 1) / kCols));
  const scalar_t* a = static_cast<const scalar_t*>(attn);
  if (reduce_max) {
    attention_scores_kernel<scalar_t, true><<<grid, block, 0, stream>>>(a, rows, K, out);
  } else {
    attention_scores_kernel<scalar_t, false><<<grid, block, 0, stream>>>(a, rows, K, out);
  }
}

}  // namespace

cudaError_t launch_attention_scores(const void* attn, Dtype dtype, int64_t rows, int64_t K,
                                    bool reduce_max, float* out, cudaStream_t stream) {
  if (K == 0) return cudaSuccess;
  if ((K + kCols - 1) / kCols > 0x7fffffff) return cudaErrorInvalidValue;
  switch (dtype) {
    case Dtype::kFloat32:
      launch<float>(attn, rows, K, reduce_max, out, stream);
      break;
    case Dtype::kFloat64:
      launch<double>(attn, rows, K, reduce_max, out, stream);
      break;
    case Dtype::kFloat16:
      launch<__half>(attn, rows, K, reduce_max, out, stream);
      break;
    case Dtype::kBFloat16:
      launch<Bf16Bits>(attn, rows, K, reduce_max, out, stream);
      break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace baton
