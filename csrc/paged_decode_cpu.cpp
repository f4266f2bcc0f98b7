// Paged decode attention on the CPU: one new query token per sequence over its cached keys,
// read in place through the block table.
//
// The torch path gathers every sequence's K and V into contiguous tensors (index_select) and
// then calls SDPA: two extra copies of the whole context per layer and step. Here each task
// takes a run of whole blocks of one sequence and walks its tokens in memory order (a
// token's K row holds every KV head, contiguous), computing every query head's scores,
// softmax statistics and weighted values for that run; the runs of a sequence are then merged
// by their maxima and sums (split-K, as flash decoding does on GPUs). Walking one head at a
// time instead strides by a whole token row per key and measured several times slower at
// long contexts (a page and a TLB entry per key).
#include "paged_decode_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_simd.h"

namespace baton {

#if defined(__x86_64__)
namespace {

using simd::hsum;
using simd::load8;
using simd::to_float;

template <typename T>
BATON_AVX2 float dot(const float* q, const T* k, int64_t D) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), load8(k + d + 8), a1);
  }
  for (; d < D; d += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), a0);
  return hsum(_mm256_add_ps(a0, a1));
}

template <typename T>
BATON_AVX2 void axpy(float a, const T* v, float* acc, int64_t D) {
  const __m256 av = _mm256_set1_ps(a);
  for (int64_t d = 0; d < D; d += 8)
    _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(av, load8(v + d), _mm256_loadu_ps(acc + d)));
}

struct Run {
  int64_t seq, block_begin, block_end;
};

// One run of blocks of one sequence: for every query head, the run's score maximum m, the
// sum l of exp(score - m) and acc = sum of exp(score - m) * value, written to part
// ([Hq, D + 2]: acc, then m, then l).
template <typename T>
BATON_AVX2 void attend_run(const float* qf, const T* k_cache, const T* v_cache,
                           const int32_t* table, int64_t n, const Run& run, int64_t block_size,
                           int64_t Hkv, int64_t G, int64_t D, float scale, float* part,
                           std::vector<float>& buf) {
  const int64_t Hq = Hkv * G, row = Hkv * D;
  const int64_t t_begin = run.block_begin * block_size;
  const int64_t t_end = std::min(n, run.block_end * block_size);
  const int64_t len = t_end - t_begin;
  buf.resize(Hq * len);
  float* p = buf.data();  // [Hq, len] scores, then exp(score - m)
  for (int64_t i = run.block_begin; i < run.block_end; ++i) {
    const T* base = k_cache + static_cast<int64_t>(table[i]) * block_size * row;
    const int64_t t0 = i * block_size, count = std::min(block_size, t_end - t0);
    for (int64_t j = 0; j < count; ++j) {
      const T* k = base + j * row;
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t g = 0; g < G; ++g) {
          const int64_t head = h * G + g;
          p[head * len + t0 + j - t_begin] = dot(qf + head * D, k + h * D, D) * scale;
        }
    }
  }
  for (int64_t head = 0; head < Hq; ++head) {
    float* ph = p + head * len;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < len; ++t) m = std::max(m, ph[t]);
    float l = 0.0f;
    for (int64_t t = 0; t < len; ++t) {
      ph[t] = std::exp(ph[t] - m);
      l += ph[t];
    }
    float* out = part + head * (D + 2);
    for (int64_t d = 0; d < D; ++d) out[d] = 0.0f;
    out[D] = m;
    out[D + 1] = l;
  }
  // The same walk as for K, written out: a lambda would not inherit the AVX2 target, and
  // dot/axpy would stop inlining.
  for (int64_t i = run.block_begin; i < run.block_end; ++i) {
    const T* base = v_cache + static_cast<int64_t>(table[i]) * block_size * row;
    const int64_t t0 = i * block_size, count = std::min(block_size, t_end - t0);
    for (int64_t j = 0; j < count; ++j) {
      const T* v = base + j * row;
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t g = 0; g < G; ++g) {
          const int64_t head = h * G + g;
          axpy(p[head * len + t0 + j - t_begin], v + h * D, part + head * (D + 2), D);
        }
    }
  }
}

template <typename T>
void decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
            const at::Tensor& block_tables, const at::Tensor& context_lens, float scale,
            at::Tensor& out) {
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t block_size = k_cache.size(1), Hkv = k_cache.size(2), G = Hq / Hkv;
  const int64_t max_blocks = block_tables.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  T* op = out.data_ptr<T>();

  // Runs: about four per thread over the batch, so one long sequence still uses every thread.
  const int64_t target = std::max<int64_t>(1, 4 * at::get_num_threads() / std::max<int64_t>(B, 1));
  std::vector<Run> runs;
  std::vector<int64_t> first_run(B + 1);
  for (int64_t b = 0; b < B; ++b) {
    first_run[b] = static_cast<int64_t>(runs.size());
    const int64_t blocks = (lens[b] + block_size - 1) / block_size;
    const int64_t per_run = std::max<int64_t>(1, (blocks + target - 1) / target);
    for (int64_t i = 0; i < blocks; i += per_run) runs.push_back({b, i, std::min(blocks, i + per_run)});
  }
  first_run[B] = static_cast<int64_t>(runs.size());

  std::vector<float> qf(B * Hq * D);
  for (int64_t i = 0; i < B * Hq * D; ++i) qf[i] = to_float(qp[i]);
  std::vector<float> parts(runs.size() * Hq * (D + 2));
  at::parallel_for(0, static_cast<int64_t>(runs.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf;
    for (int64_t r = begin; r < end; ++r) {
      const Run& run = runs[r];
      attend_run(qf.data() + run.seq * Hq * D, kp, vp, tables + run.seq * max_blocks, lens[run.seq],
                 run, block_size, Hkv, G, D, scale, parts.data() + r * Hq * (D + 2), buf);
    }
  });

  // Merge each head's runs: out = sum_r e^(m_r - M) acc_r / sum_r e^(m_r - M) l_r.
  at::parallel_for(0, B * Hq, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hq, head = task % Hq;
      T* o = op + task * D;
      if (first_run[b] == first_run[b + 1]) {  // empty context: a zero row
        for (int64_t d = 0; d < D; ++d) o[d] = T(0.0f);
        continue;
      }
      float M = -std::numeric_limits<float>::infinity();
      for (int64_t r = first_run[b]; r < first_run[b + 1]; ++r)
        M = std::max(M, parts[(r * Hq + head) * (D + 2) + D]);
      std::fill(acc.begin(), acc.end(), 0.0f);
      float l = 0.0f;
      for (int64_t r = first_run[b]; r < first_run[b + 1]; ++r) {
        const float* part = parts.data() + (r * Hq + head) * (D + 2);
        const float w = std::exp(part[D] - M);
        l += w * part[D + 1];
        for (int64_t d = 0; d < D; ++d) acc[d] += w * part[d];
      }
      for (int64_t d = 0; d < D; ++d) o[d] = T(acc[d] / l);
    }
  });
}

}  // namespace

bool paged_decode_cpu_supported() { return simd::cpu_has_avx2_fma(); }

at::Tensor paged_decode_cpu(const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables,
                            const at::Tensor& context_lens, double scale) {
  at::Tensor out = at::empty_like(q);
  if (q.scalar_type() == at::kBFloat16) {
    decode<c10::BFloat16>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
  } else {
    decode<float>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
  }
  return out;
}

#else  // not x86-64: the Python wrapper never calls the kernel (paged_decode_cpu_supported)

bool paged_decode_cpu_supported() { return false; }

at::Tensor paged_decode_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, double) {
  TORCH_CHECK(false, "paged_decode_attention: needs an x86-64 CPU with AVX2 and FMA");
}

#endif

}  // namespace baton
