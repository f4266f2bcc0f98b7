// Fused per-token statistics over logits rows on CUDA: one block per row.
//
// Each thread streams a strided slice of the row (16-byte loads when the row is aligned) and
// keeps an online partial: top-1 (also the shift), top-2, Z = sum exp(x - top1) and
// S = sum exp(x - top1) (x - top1). Partials merge with warp shuffles, then across warps in
// shared memory; the same formulas as the CPU kernel (csrc/token_stats.cpp) finish the row.
#include <cuda_runtime.h>

#include <cstdint>

#include "scoring_cuda.h"

namespace baton {
namespace cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

struct Partial {
  float top1;  // running maximum; z and s are relative to it
  float top2;  // runner-up (a repeated maximum counts twice, as in torch.topk)
  float z;     // sum exp(x - top1)
  float s;     // sum exp(x - top1) (x - top1)
  int bad;     // saw NaN or +inf
};

__device__ __forceinline__ Partial empty_partial() {
  return Partial{-INFINITY, -INFINITY, 0.0f, 0.0f, 0};
}

__device__ __forceinline__ float to_float(float x) { return x; }
// bfloat16 travels as its bits: the top half of a float32.
__device__ __forceinline__ float to_float(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}

__device__ __forceinline__ void push(Partial& p, float x) {
  if (!(x < INFINITY)) {  // NaN or +inf: the row has no distribution
    p.bad = 1;
    return;
  }
  if (x > p.top1) {
    if (p.z > 0.0f) {  // rescale the sums to the new maximum
      const float delta = p.top1 - x;
      const float f = __expf(delta);
      p.s = f * (p.s + p.z * delta);
      p.z *= f;
    }
    p.top2 = p.top1;
    p.top1 = x;
    p.z += 1.0f;  // exp(0); adds 0 to s
  } else {
    p.top2 = fmaxf(p.top2, x);
    if (x > -INFINITY) {  // -inf has probability 0 (and would give 0 * -inf in s)
      const float d = x - p.top1;
      const float e = __expf(d);
      p.z += e;
      p.s += e * d;
    }
  }
}

__device__ __forceinline__ Partial merge(Partial a, Partial b) {
  if (b.top1 > a.top1) {
    const Partial t = a;
    a = b;
    b = t;
  }
  Partial r = a;
  r.bad = a.bad | b.bad;
  r.top2 = fmaxf(a.top2, b.top1);  // a.top1 >= b.top1 >= b.top2
  if (b.z > 0.0f) {
    const float delta = b.top1 - a.top1;
    const float f = __expf(delta);
    r.z += f * b.z;
    r.s += f * (b.s + b.z * delta);
  }
  return r;
}

__device__ __forceinline__ Partial warp_merge(Partial p) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    Partial o;
    o.top1 = __shfl_xor_sync(0xffffffffu, p.top1, offset);
    o.top2 = __shfl_xor_sync(0xffffffffu, p.top2, offset);
    o.z = __shfl_xor_sync(0xffffffffu, p.z, offset);
    o.s = __shfl_xor_sync(0xffffffffu, p.s, offset);
    o.bad = __shfl_xor_sync(0xffffffffu, p.bad, offset);
    p = merge(p, o);
  }
  return p;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    token_stats_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ ids,
                       int64_t V, float* __restrict__ entropy, float* __restrict__ max_prob,
                       float* __restrict__ margin, float* __restrict__ logprob) {
  constexpr int kVec = 16 / sizeof(scalar_t);  // values per 16-byte load
  const int64_t row = blockIdx.x;
  const scalar_t* x = logits + row * V;
  Partial p = empty_partial();

  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const int64_t vec_end = aligned ? V / kVec * kVec : 0;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * kVec; i < vec_end;
       i += static_cast<int64_t>(kThreads) * kVec) {
    const uint4 raw = *reinterpret_cast<const uint4*>(x + i);
    scalar_t vals[kVec];
    memcpy(vals, &raw, sizeof(raw));
#pragma unroll
    for (int k = 0; k < kVec; ++k) push(p, to_float(vals[k]));
  }
  for (int64_t i = vec_end + threadIdx.x; i < V; i += kThreads) push(p, to_float(x[i]));

  __shared__ Partial warp_partials[kWarps];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  p = warp_merge(p);
  if (lane == 0) warp_partials[warp] = p;
  __syncthreads();
  if (warp != 0) return;
  p = warp_merge(lane < kWarps ? warp_partials[lane] : empty_partial());
  if (lane != 0) return;

  if (p.bad || !(p.top1 > -INFINITY)) {  // NaN / +inf present, or all -inf
    entropy[row] = max_prob[row] = margin[row] = logprob[row] = NAN;
    return;
  }
  const float log_z = logf(p.z);  // z >= 1: the maximum contributes exp(0)
  const float p1 = 1.0f / p.z;
  const float p2 = __expf(p.top2 - p.top1) / p.z;  // 0 when top2 = -inf
  const int64_t id = ids[row];
  const float target = id >= 0 && id < V ? to_float(x[id]) : NAN;  // wrapper rejects bad ids
  entropy[row] = fmaxf(log_z - p.s / p.z, 0.0f);
  max_prob[row] = p1;
  margin[row] = p1 - p2;
  logprob[row] = target - p.top1 - log_z;
}

}  // namespace

cudaError_t launch_token_stats(const void* logits, Dtype dtype, const int64_t* ids, int64_t T,
                               int64_t V, float* entropy, float* max_prob, float* margin,
                               float* logprob, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (T > 0x7fffffff) return cudaErrorInvalidValue;  // one block per row
  const unsigned int grid = static_cast<unsigned int>(T);
  if (dtype == Dtype::kBFloat16) {
    token_stats_kernel<uint16_t><<<grid, kThreads, 0, stream>>>(
        static_cast<const uint16_t*>(logits), ids, V, entropy, max_prob, margin, logprob);
  } else if (dtype == Dtype::kFloat32) {
    token_stats_kernel<float><<<grid, kThreads, 0, stream>>>(
        static_cast<const float*>(logits), ids, V, entropy, max_prob, margin, logprob);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace baton
