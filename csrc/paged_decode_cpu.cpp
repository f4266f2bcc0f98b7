// Paged decode attention on the CPU: one new query token per sequence over its cached keys,
// read in place through the block table.
//
// The torch path gathers every sequence's K and V into contiguous tensors (index_select) and
// then calls SDPA: two extra copies of the whole context per layer and step. Here each task
// takes a run of whole blocks of one sequence and walks its keys in memory order (a token's
// K row holds every KV head, contiguous), computing every query head's scores and softmax
// statistics for that run; the values are then summed block by block, each head's sums held
// in registers over the block's tokens while the next block is prefetched (paged_decode_body.inc).
// The runs of a sequence are merged by their maxima and sums (split-K, as flash decoding does
// on GPUs). Walking one head at a time over the whole context instead strides by a token row
// per key and measured several times slower at long contexts (a page and a TLB entry per key);
// within one block (a few pages, prefetched) the stride costs nothing.
//
// One body (paged_decode_body.inc) per instruction-set path (cpu_isa.h): generic, AVX2,
// AVX-512 (the avx512bf16 and amx levels run the AVX-512 one: the scores are memory-bound).
#include "paged_decode_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_isa.h"
#include "cpu_simd.h"

namespace baton {

namespace {

using cpu::Isa;
using simd::to_float;

struct Run {
  int64_t seq, block_begin, block_end;
};

#define BATON_ISA_BODY "paged_decode_body.inc"
#include "isa_bodies.inc"
#undef BATON_ISA_BODY

template <typename T>
using AttendFn = void (*)(const float*, const T*, const T*, const int32_t*, int64_t, const Run&,
                          int64_t, int64_t, int64_t, int64_t, float, float*, std::vector<float>&);

template <typename T>
AttendFn<T> attend_for(Isa isa) {
#if defined(__x86_64__)
  if (isa >= Isa::kAvx512) return &avx512::attend_run<T>;
  if (isa == Isa::kAvx2) return &avx2::attend_run<T>;
#endif
  return &generic::attend_run<T>;
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
  const AttendFn<T> attend_run = attend_for<T>(cpu::active_isa());
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

bool paged_decode_cpu_supported() { return true; }

const char* paged_decode_cpu_path() {
  const Isa isa = cpu::active_isa();
  return cpu::isa_name(isa >= Isa::kAvx512Bf16 ? Isa::kAvx512 : isa);
}

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

}  // namespace baton
