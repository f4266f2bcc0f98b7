// Skinny GEMM on the CPU: y[M, N] = x[M, K] @ w[N, K]^T (+ bias), for few rows (and, where
// kernels/linear.py measured it faster than torch, many).
//
// Decode steps and warm prefills multiply a handful of rows by every weight matrix. At those
// shapes the BLAS sgemm path re-packs the weight on every call, so M = 2..8 run several times
// slower than M = 1 (a GEMV) although they read the same bytes (bench/kernels/
// test_bench_linear.py). Here each weight row is read from memory once: a block of R rows is
// dotted with every input row while it sits in L1/L2, so the time stays near the weight-read
// time. Threads take the weight rows (output columns) in chunks (row_chunks.h), and read each
// chunk as 4 long sequential streams (rows() in skinny_body.inc): on an AVX2 EPYC that ran
// the GEMV faster than a single-stream read of the same bytes (bench/kernels/gemv_bandwidth.py).
//
// From a full panel of input rows on (16 on AVX2, 32 on AVX-512) the product is compute-bound
// and runs the panel GEMM instead (panel_gemm.inc): 1.2-1.3x the row-block tiles at 32-800
// rows on the AVX2 EPYC, in turn in one process.
//
// One body (skinny_body.inc, panel_gemm.inc) per instruction-set path (cpu_isa.h), included by
// isa_bodies.inc: generic, AVX2 (8 floats per FMA), AVX-512 (16). At the avx512bf16 level
// bfloat16 x bfloat16 products use vdpbf16ps instead (32 products per instruction, no
// widening), accumulated in float32; at the amx level, kAmxMinRows..kAmxMaxRows input rows
// run on AMX tiles (amx_linear.cpp) for every whole block of 16 weight rows.
#include "skinny_linear.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "amx_linear.h"
#include "cpu_isa.h"
#include "cpu_simd.h"
#include "row_chunks.h"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace baton {
namespace {

using cpu::Isa;

#define BATON_ISA_BODY "skinny_body.inc"
#define BATON_ISA_BODY2 "panel_gemm.inc"
#include "isa_bodies.inc"
#undef BATON_ISA_BODY
#undef BATON_ISA_BODY2

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
namespace avx512bf16 {
using BF = c10::BFloat16;

// 32 bfloat16 values as the dot-product instruction's operand type.
inline __m512bh load32(const BF* p) {
  return (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(p));
}

// R weight rows (ldw values apart; outputs ys apart) against C input rows, both bfloat16:
// vdpbf16ps multiplies pairs exactly and adds them into float32 sums. 4 x 4 uses 21 of the 32
// zmm registers. Each step reads one cache line per row (see rows() in skinny_body.inc) and
// prefetches one: of these rows, or, given `next`, of the rows at next (same stride) into L2.
template <int R, int C, typename YT>
void tile(const BF* x, const BF* w, int64_t ldw, int64_t K, const float* bias, YT* y, int64_t ldy,
          int64_t ys, const BF* next) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    if (next) {
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(next + r * ldw + k), _MM_HINT_T1);
    } else {
      avx512::prefetch_rows<R>(w, ldw, k);
    }
    __m512bh xv[C];
    for (int c = 0; c < C; ++c) xv[c] = load32(x + c * K + k);
    for (int r = 0; r < R; ++r) {
      const __m512bh wv = load32(w + r * ldw + k);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], wv, xv[c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float s = _mm512_reduce_add_ps(acc[r][c]);
      for (int64_t t = k; t < K; ++t) s += static_cast<float>(w[r * ldw + t]) * static_cast<float>(x[c * K + t]);
      y[c * ldy + r * ys] = YT(bias ? s + bias[r * ys] : s);
    }
  }
}

// The first column chunk of input rows streams the R weight rows from memory; the later ones
// find them in cache, and meanwhile bring in the next block's rows (each block's rows are
// followed by the next block's, rows() below): without that the memory idled through the later
// chunks. 5-16 input rows ran 1.04-1.2x faster, 32 rows 1.12x (bench-0.5b's products, 6
// layers of weights, 2 threads, AVX-512 EPYC, in turn in one process); 1-4 rows are one chunk.
// The same in the float32 tiles (skinny_body.inc) changed nothing there (0.996-1.006x).
template <int R, typename YT>
void row_block(const BF* x, int64_t M, const BF* w, int64_t ldw, int64_t K, const float* bias, YT* y,
               int64_t ldy, int64_t ys) {
  int64_t m = 0;
  auto next = [&](int64_t m) { return m > 0 ? w + K : nullptr; };
  for (; m + 4 <= M; m += 4) tile<R, 4>(x + m * K, w, ldw, K, bias, y + m * ldy, ldy, ys, next(m));
  const int64_t rem = M - m;
  x += m * K;
  y += m * ldy;
  if (rem == 3) tile<R, 3>(x, w, ldw, K, bias, y, ldy, ys, next(m));
  if (rem == 2) tile<R, 2>(x, w, ldw, K, bias, y, ldy, ys, next(m));
  if (rem == 1) tile<R, 1>(x, w, ldw, K, bias, y, ldy, ys, next(m));
}

// As rows() in skinny_body.inc: 4 runs of the chunk read side by side, then the last rows.
template <typename YT>
void rows(const BF* x, int64_t M, const BF* w, int64_t K, const float* bias, YT* y, int64_t N,
          int64_t n0, int64_t n1) {
  for_row_runs(
      n0, n1,
      [&](int64_t n, int64_t run) { row_block<4>(x, M, w + n * K, run * K, K, bias ? bias + n : nullptr, y + n, N, run); },
      [&](int64_t n) { row_block<1>(x, M, w + n * K, K, K, bias ? bias + n : nullptr, y + n, N, 1); });
}
}  // namespace avx512bf16
#pragma GCC pop_options
#endif

// Weight rows per chunk a thread claims on the panel path: a multiple of 12 (whole panel tiles
// on every path); float32 rows are read in place. bfloat16 rows are widened per chunk into
// about 192 KB (L2) below 64 input rows. From 64 rows on, every chunk streams all of x
// (M x K floats) past its rows, and that traffic outweighs the widened chunk's L2 residency:
// at 880 rows and K = 3584 (12.6 MB of x) 12-row chunks ran 1.16x slower than 48-row ones,
// and a batch-32 bf16 prefill 1.12x slower overall (AVX2 EPYC, 2 threads, A/B in turn); at
// 64-400 rows the two were within 2%.
inline int64_t panel_chunk_rows(int64_t K, bool widen, int64_t M) {
  if (!widen) return 48;
  const int64_t budget = (M >= 64 ? int64_t(768) : int64_t(192)) << 10;
  return std::clamp<int64_t>(budget / (4 * K) / 12 * 12, 12, 48);
}

// Many input rows: the panel GEMM (panel_gemm.inc), x packed once into panels of 2W rows.
// Returns false, computing nothing, below one full panel of rows (there the row-block tiles
// were faster, float32 and bfloat16, on the AVX2 EPYC).
template <typename WT, typename YT>
bool panel_gemm(Isa isa, const float* x, int64_t M, const WT* w, int64_t K, const float* bias, YT* y, int64_t N) {
  const int64_t chunk = panel_chunk_rows(K, std::is_same_v<WT, c10::BFloat16>, M);
  auto run = [&](int64_t panel, auto pack, auto rows) {
    if (M < panel) return false;
    std::vector<float> xp(static_cast<size_t>((M + panel - 1) / panel * panel * K));
    pack(x, M, K, xp.data());
    for_row_chunks(N, chunk, [&](int64_t n0, int64_t n1) { rows(xp.data(), M, w, K, bias, y, N, n0, n1); });
    return true;
  };
#if defined(__x86_64__)
  if (isa >= Isa::kAvx512) return run(avx512::kPanel, avx512::pack_panels, avx512::panel_rows<WT, YT>);
  if (isa == Isa::kAvx2) return run(avx2::kPanel, avx2::pack_panels, avx2::panel_rows<WT, YT>);
#endif
  return run(generic::kPanel, generic::pack_panels, generic::panel_rows<WT, YT>);
}

// The widening paths: x as float32, w of type WT, y of type YT. With bfloat16 weights and few
// rows the vector paths read x rearranged for their paired loads (pair_permute, M x K floats:
// small beside the weight); past 5 column chunks of rows each block of weight rows is widened
// once; from a full panel of rows on, the panel GEMM.
template <typename WT, typename YT>
void widening(Isa isa, const float* x, int64_t M, const WT* w, int64_t K, const float* bias, YT* y,
              int64_t N) {
  if (panel_gemm(isa, x, M, w, K, bias, y, N)) return;
#if defined(__x86_64__)
  std::vector<float> permuted;
  if constexpr (std::is_same_v<WT, c10::BFloat16>) {
    const bool paired = isa >= Isa::kAvx512 ? !avx512::widen_once(M) : !avx2::widen_once(M);
    if (isa >= Isa::kAvx2 && paired) {
      permuted.resize(static_cast<size_t>(M * K));
      if (isa >= Isa::kAvx512) {
        avx512::pair_permute(x, permuted.data(), M, K);
      } else {
        avx2::pair_permute(x, permuted.data(), M, K);
      }
      x = permuted.data();
    }
  }
#endif
  for_row_chunks(N, chunk_rows(K, sizeof(WT)), [&](int64_t n0, int64_t n1) {
#if defined(__x86_64__)
    if (isa >= Isa::kAvx512) return avx512::rows(x, M, w, K, bias, y, N, n0, n1);
    if (isa == Isa::kAvx2) return avx2::rows(x, M, w, K, bias, y, N, n0, n1);
#endif
    generic::rows(x, M, w, K, bias, y, N, n0, n1);
  });
}

template <typename WT>
void dispatch_y(Isa isa, const float* x, int64_t M, const WT* w, int64_t K, const float* bias,
                at::Tensor& y) {
  const int64_t N = y.size(1);
  if (y.scalar_type() == at::kBFloat16) {
    widening(isa, x, M, w, K, bias, y.data_ptr<c10::BFloat16>(), N);
  } else {
    widening(isa, x, M, w, K, bias, y.data_ptr<float>(), N);
  }
}

}  // namespace

bool skinny_linear_supported() { return true; }

const char* skinny_linear_path(bool bf16) {
  const Isa isa = cpu::active_isa();
  if (!bf16 && isa >= Isa::kAvx512Bf16) return cpu::isa_name(Isa::kAvx512);
  return cpu::isa_name(isa);
}

at::Tensor skinny_linear_cpu(const at::Tensor& x, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  const Isa isa = cpu::active_isa();
#if defined(__x86_64__)
  if (isa >= Isa::kAvx512Bf16 && x.scalar_type() == at::kBFloat16) {
    using BF = c10::BFloat16;
    const BF* xp = x.data_ptr<BF>();
    const BF* wp = w.data_ptr<BF>();
    BF* yp = y.data_ptr<BF>();
    // On AMX, batched rows go to the tiles for whole blocks of 16 weight rows; the rest here.
    const bool tiles = isa == Isa::kAmx && M >= kAmxMinRows && M <= kAmxMaxRows && K >= 32;
    const int64_t done = tiles ? amx_linear_bf16(xp, M, wp, K, bp, yp, N) : 0;
    for_row_chunks(N - done, chunk_rows(K, sizeof(BF)), [&](int64_t n0, int64_t n1) {
      avx512bf16::rows(xp, M, wp, K, bp, yp, N, done + n0, done + n1);
    });
    return y;
  }
#endif
  // bfloat16 inputs are widened once here (M x K values, small beside the weight).
  const at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  if (w.scalar_type() == at::kBFloat16) {
    dispatch_y(isa, xf.data_ptr<float>(), M, w.data_ptr<c10::BFloat16>(), K, bp, y);
  } else {
    dispatch_y(isa, xf.data_ptr<float>(), M, w.data_ptr<float>(), K, bp, y);
  }
  return y;
}

}  // namespace baton
