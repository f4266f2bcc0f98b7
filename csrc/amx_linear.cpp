// bfloat16 skinny GEMM on AMX tiles, for batched decode (kAmxMinRows..kAmxMaxRows input rows).
//
// At 8 input rows the AVX512_BF16 row tiles (skinny_linear.cpp) were compute-bound on an AMD
// EPYC (about one vdpbf16ps per cycle per core: 59-65% of the weight-read floor at batch 8,
// bench/decode_profile.py). One TDPBF16PS does a 16 x 16 x 32 block, 16 times the work of a
// vdpbf16ps, so on AMX CPUs batched decode can go back to being bound by the weight read.
//
// The kernel (amx_body.inc) is compiled twice: on the real tiles, and on emulated ones that
// follow the instructions' semantics in plain C++ (amx_tiles.h), so its packing, tile layout
// and tails are tested on every CPU. No AMX CPU has run the real copy yet; it is opt-in
// (BATON_CPU_ISA=amx, cpu_isa.h) until one measures it (bench/amx_check.py).
#include "amx_linear.h"

#include <ATen/ops/empty.h>

#include "amx_tiles.h"
#include "cpu_isa.h"
#include "row_chunks.h"

#include <algorithm>
#include <vector>

namespace baton {
namespace {

namespace emulated {
using Tiles = amx::EmulatedTiles;
#include "amx_body.inc"
}  // namespace emulated

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")  // = BATON_TARGET_AMX
namespace real {
using Tiles = amx::AmxTiles;
#include "amx_body.inc"
}  // namespace real
#pragma GCC pop_options
#endif

}  // namespace

int64_t amx_linear_bf16(const c10::BFloat16* x, int64_t M, const c10::BFloat16* w, int64_t K,
                        const float* bias, c10::BFloat16* y, int64_t N) {
#if defined(__x86_64__)
  TORCH_CHECK(cpu::detected_isa() >= cpu::Isa::kAmx, "amx_linear_bf16: this CPU has no usable AMX");
  return real::product(x, M, w, K, bias, y, N);
#else
  TORCH_CHECK(false, "amx_linear_bf16: AMX is x86-64 only");
#endif
}

at::Tensor amx_linear_bf16_emulated(const at::Tensor& x, const at::Tensor& w,
                                    const std::optional<at::Tensor>& bias) {
  using BF = c10::BFloat16;
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  const BF* xp = x.data_ptr<BF>();
  const BF* wp = w.data_ptr<BF>();
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  BF* yp = y.data_ptr<BF>();
  const int64_t n16 = emulated::product(xp, M, wp, K, bp, yp, N);
  for (int64_t n = n16; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float s = 0.0f;
      for (int64_t k = 0; k < K; ++k) s += static_cast<float>(wp[n * K + k]) * static_cast<float>(xp[m * K + k]);
      yp[m * N + n] = BF(bp ? s + bp[n] : s);
    }
  return y;
}

}  // namespace baton
