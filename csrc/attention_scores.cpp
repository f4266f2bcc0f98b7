// Attention-mass scores on the CPU: reduce attn [H, Q, K] over heads and queries to [K].
//
// The H * Q rows are walked top to bottom for one strip of kStrip keys at a time, so every
// read is contiguous and the accumulators stay in registers / L1. Threads split the keys.
// Sums accumulate in float64 (H * Q can be large); max propagates NaN like torch.amax.
#include "scoring.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <limits>

namespace baton {
namespace {

constexpr int64_t kStrip = 256;

template <typename scalar_t>
void sum_strip(const scalar_t* a, int64_t rows, int64_t K, int64_t k0, int64_t n, float* out) {
  double acc[kStrip] = {};
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* row = a + r * K + k0;
    for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<float>(row[j]);
  }
  for (int64_t j = 0; j < n; ++j) out[k0 + j] = static_cast<float>(acc[j]);
}

template <typename scalar_t>
void max_strip(const scalar_t* a, int64_t rows, int64_t K, int64_t k0, int64_t n, float* out) {
  float acc[kStrip];
  for (int64_t j = 0; j < n; ++j) acc[j] = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* row = a + r * K + k0;
    for (int64_t j = 0; j < n; ++j) {
      const float v = static_cast<float>(row[j]);
      acc[j] = (v > acc[j] || v != v) ? v : acc[j];  // once NaN, stays NaN
    }
  }
  for (int64_t j = 0; j < n; ++j) out[k0 + j] = acc[j];
}

}  // namespace

at::Tensor attention_scores_cpu(const at::Tensor& attn, bool reduce_max) {
  const int64_t rows = attn.size(0) * attn.size(1);
  const int64_t K = attn.size(2);
  at::Tensor out = at::empty({K}, attn.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, attn.scalar_type(), "attention_scores_cpu", [&] {
        const scalar_t* a = attn.data_ptr<scalar_t>();
        at::parallel_for(0, K, kStrip, [&](int64_t b, int64_t e) {
          for (int64_t k0 = b; k0 < e; k0 += kStrip) {
            const int64_t n = e - k0 < kStrip ? e - k0 : kStrip;
            if (reduce_max) {
              max_strip(a, rows, K, k0, n, o);
            } else {
              sum_strip(a, rows, K, k0, n, o);
            }
          }
        });
      });
  return out;
}

}  // namespace baton
