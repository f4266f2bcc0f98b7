// Fused per-token statistics over logits rows on the CPU.
//
// Each row is streamed once from memory in blocks of kBlock values that stay in L1:
//   pass A over the block updates lane-wise top-2 values (their maximum over lanes is the
//          running row maximum M) and flags NaN / +inf;
//   pass B over the same block accumulates Z = sum exp(x - M) and S = sum exp(x - M) (x - M).
// When a block raises M, the row's running (Z, S) are rescaled once (online log-sum-exp):
//   Z' = Z f, S' = f (S + Z delta), with delta = M_old - M_new and f = exp(delta).
// At the end: log-sum-exp = M + log Z, entropy = log Z - S / Z, max_prob = 1 / Z and the
// second probability is exp(top2 - M) / Z. No [T, V] temporary is ever allocated.
//
// The passes use GCC/Clang vector extensions (8 floats; two SSE halves where AVX is absent)
// with two independent accumulators; on x86-64 with GCC the row loops are also cloned for
// AVX2 + FMA and the clone is picked at load time.
#include "scoring.h"

// The vector helpers below are always inlined, so no vector value crosses a call boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define BATON_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define BATON_CPU_CLONES
#endif
#define BATON_INLINE inline __attribute__((always_inline))

namespace baton {
namespace {

constexpr int kWidth = 8;               // floats per vector
constexpr int kStep = 2 * kWidth;       // floats per loop iteration (two accumulators)
constexpr int64_t kBlock = 2048;        // 8 KiB of float32: a block stays in L1 between passes
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// Differences x - M are clamped here before exp, and exp() below about -87.7 is flushed to
// exactly 0 (it would be < 2^-126 next to the row maximum's exp(0) = 1); together they keep
// -inf logits from producing 0 * -inf = NaN in S.
constexpr float kClamp = -104.0f;

typedef float vfloat __attribute__((vector_size(kWidth * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kWidth * sizeof(int32_t))));

BATON_INLINE vfloat splat(float x) { return vfloat{x, x, x, x, x, x, x, x}; }

BATON_INLINE vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// exp(d) for d in [kClamp, 0]: Cephes-style range reduction (d = n ln2 + r, |r| <= ln2 / 2)
// and a degree-6 polynomial, about 1 ulp; 2^n is built in the exponent bits and is 0 for
// n < -126.
BATON_INLINE vfloat exp_nonpositive(vfloat d) {
  const vfloat t = d * 1.44269504088896341f;
  const vfloat n = (t + 12582912.0f) - 12582912.0f;  // round to nearest via 1.5 * 2^23
  const vfloat r = (d - n * 0.693359375f) + n * 2.12194440e-4f;
  vfloat p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vint k = __builtin_convertvector(n, vint) + 127;
  k = k > 0 ? k : 0;
  return p * reinterpret_cast<vfloat>(k << 23);
}

struct Lanes {
  vfloat top1[2];
  vfloat top2[2];
  vint bad[2];  // lanes that saw NaN or +inf
};

// Pass A: lane-wise top-2 (duplicates count twice, as in torch.topk) and NaN / +inf flags.
// n is a multiple of kStep.
BATON_INLINE void scan_block(const float* x, int64_t n, Lanes& L) {
  for (int64_t i = 0; i < n; i += kStep) {
    for (int h = 0; h < 2; ++h) {
      const vfloat v = load(x + i + h * kWidth);
      const vfloat lo = v < L.top1[h] ? v : L.top1[h];
      L.top1[h] = v > L.top1[h] ? v : L.top1[h];
      L.top2[h] = lo > L.top2[h] ? lo : L.top2[h];
      L.bad[h] |= ~(v < kInf);
    }
  }
}

// Pass B: adds sum exp(x - m) and sum exp(x - m) (x - m) over one block to (z, s).
// n is a multiple of kStep; m is finite.
BATON_INLINE void exp_block(const float* x, int64_t n, float m, double& z, double& s) {
  vfloat zv[2] = {splat(0.0f), splat(0.0f)};
  vfloat sv[2] = {splat(0.0f), splat(0.0f)};
  for (int64_t i = 0; i < n; i += kStep) {
    for (int h = 0; h < 2; ++h) {
      vfloat d = load(x + i + h * kWidth) - m;
      d = d > kClamp ? d : kClamp;  // -inf (and NaN, flagged by pass A) -> kClamp
      const vfloat e = exp_nonpositive(d);
      zv[h] += e;
      sv[h] += e * d;
    }
  }
  double zs = 0.0, ss = 0.0;
  for (int j = 0; j < kWidth; ++j) {
    zs += static_cast<double>(zv[0][j]) + zv[1][j];
    ss += static_cast<double>(sv[0][j]) + sv[1][j];
  }
  z += zs;
  s += ss;
}

// bfloat16 is the top half of a float32.
BATON_INLINE float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

struct RowOut {
  float* entropy;
  float* max_prob;
  float* margin;
  float* logprob;
};

BATON_INLINE void finish_row(const Lanes& L, double z, double s, float target, int64_t r,
                             const RowOut& out) {
  float t1[2 * kWidth], t2[2 * kWidth];
  int32_t bad = 0;
  for (int h = 0; h < 2; ++h) {
    for (int j = 0; j < kWidth; ++j) {
      t1[h * kWidth + j] = L.top1[h][j];
      t2[h * kWidth + j] = L.top2[h][j];
      bad |= L.bad[h][j];
    }
  }
  int best = 0;
  for (int j = 1; j < 2 * kWidth; ++j) {
    if (t1[j] > t1[best]) best = j;
  }
  const float top1 = t1[best];
  float top2 = t2[best];  // the second value is the best lane's runner-up or another lane's top
  for (int j = 0; j < 2 * kWidth; ++j) {
    if (j != best && t1[j] > top2) top2 = t1[j];
  }
  if (bad || !(top1 > -kInf)) {  // NaN / +inf present, or every logit is -inf: no distribution
    out.entropy[r] = out.max_prob[r] = out.margin[r] = out.logprob[r] = kNaN;
    return;
  }
  const double log_z = std::log(z);  // z >= 1: the maximum contributes exp(0)
  const double entropy = log_z - s / z;
  const double p1 = 1.0 / z;
  const double p2 = std::exp(static_cast<double>(top2) - top1) / z;  // 0 when top2 = -inf
  out.entropy[r] = static_cast<float>(entropy > 0.0 ? entropy : 0.0);
  out.max_prob[r] = static_cast<float>(p1);
  out.margin[r] = static_cast<float>(p1 - p2);
  out.logprob[r] = static_cast<float>(static_cast<double>(target) - top1 - log_z);
}

// One row. `fill(b, n, buf)` returns a pointer to the row's values [b, b + n) as float32,
// either in place or converted into buf; the tail beyond a multiple of kStep is padded with
// -inf, which changes none of the statistics.
template <typename Fill>
BATON_INLINE void row_stats(Fill fill, int64_t V, float target, int64_t r, float* buf,
                            const RowOut& out) {
  Lanes L;
  for (int h = 0; h < 2; ++h) {
    L.top1[h] = splat(-kInf);
    L.top2[h] = splat(-kInf);
    L.bad[h] = vint{};
  }
  float m = -kInf;  // shift of the running sums
  double z = 0.0, s = 0.0;
  for (int64_t b = 0; b < V; b += kBlock) {
    const int64_t n = V - b < kBlock ? V - b : kBlock;
    const int64_t padded = (n + kStep - 1) / kStep * kStep;
    const float* x = fill(b, n, padded, buf);
    scan_block(x, padded, L);
    const vfloat mv = L.top1[0] > L.top1[1] ? L.top1[0] : L.top1[1];
    float m_new = mv[0];
    for (int j = 1; j < kWidth; ++j) m_new = mv[j] > m_new ? mv[j] : m_new;
    if (!(m_new > -kInf)) continue;  // everything so far is -inf: contributes nothing
    if (m_new > m) {
      if (z > 0.0) {
        const double delta = static_cast<double>(m) - m_new;
        const double f = std::exp(delta);
        s = f * (s + z * delta);
        z *= f;
      }
      m = m_new;
    }
    exp_block(x, padded, m, z, s);
  }
  finish_row(L, z, s, target, r, out);
}

BATON_CPU_CLONES
void rows_f32(const float* logits, const int64_t* ids, int64_t V, int64_t r0, int64_t r1,
              const RowOut& out) {
  alignas(64) float buf[kBlock];
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = logits + r * V;
    auto fill = [row](int64_t b, int64_t n, int64_t padded, float* dst) -> const float* {
      if (n == padded) return row + b;  // in place
      std::memcpy(dst, row + b, n * sizeof(float));
      for (int64_t i = n; i < padded; ++i) dst[i] = -kInf;
      return dst;
    };
    const int64_t id = ids[r];
    const float target = id >= 0 && id < V ? row[id] : kNaN;  // the wrapper rejects bad ids
    row_stats(fill, V, target, r, buf, out);
  }
}

BATON_CPU_CLONES
void rows_bf16(const uint16_t* logits, const int64_t* ids, int64_t V, int64_t r0, int64_t r1,
               const RowOut& out) {
  alignas(64) float buf[kBlock];
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = logits + r * V;
    auto fill = [row](int64_t b, int64_t n, int64_t padded, float* dst) -> const float* {
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(row[b + i]);
      for (int64_t i = n; i < padded; ++i) dst[i] = -kInf;
      return dst;
    };
    const int64_t id = ids[r];
    const float target = id >= 0 && id < V ? bf16_to_float(row[id]) : kNaN;
    row_stats(fill, V, target, r, buf, out);
  }
}

}  // namespace

TokenStatsResult token_stats_cpu(const at::Tensor& logits, const at::Tensor& token_ids) {
  const int64_t T = logits.size(0);
  const int64_t V = logits.size(1);
  const auto opts = logits.options().dtype(at::kFloat);
  at::Tensor entropy = at::empty({T}, opts);
  at::Tensor max_prob = at::empty({T}, opts);
  at::Tensor margin = at::empty({T}, opts);
  at::Tensor logprob = at::empty({T}, opts);
  const RowOut out{entropy.data_ptr<float>(), max_prob.data_ptr<float>(),
                   margin.data_ptr<float>(), logprob.data_ptr<float>()};
  const int64_t* ids = token_ids.data_ptr<int64_t>();
  const bool is_bf16 = logits.scalar_type() == at::kBFloat16;
  const void* data = logits.data_ptr();
  // A row is ~10 V flops: a grain of one row already amortises the fork.
  at::parallel_for(0, T, 1, [&](int64_t r0, int64_t r1) {
    if (is_bf16) {
      rows_bf16(static_cast<const uint16_t*>(data), ids, V, r0, r1, out);
    } else {
      rows_f32(static_cast<const float*>(data), ids, V, r0, r1, out);
    }
  });
  return {entropy, max_prob, margin, logprob};
}

}  // namespace baton
