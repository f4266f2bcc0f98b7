// The eight AMX tile registers, as two interchangeable policies for the kernel in
// amx_linear.cpp: AmxTiles issues the real instructions (AMX-TILE + AMX-BF16); EmulatedTiles
// keeps eight 1 KB tiles per thread in memory and follows the instructions' documented
// semantics (Intel SDM: LDTILECFG, TILELOADD, TILEZERO, TDPBF16PS, TILESTORED, TILERELEASE).
// The kernel is written once against the policy, so the emulated copy checks its tile
// arithmetic, packing and tails on any CPU (tests/kernels/test_amx_linear.py); only the
// one-to-one mapping onto the instructions is left to an AMX CPU.
//
// Every tile here is configured alike: 16 rows of 64 bytes (16 floats, or 32 bfloat16 values
// as 16 pairs). TDPBF16PS c, a, b: c[m][n] += a[m][2k] * b[k][2n] + a[m][2k+1] * b[k][2n+1]
// summed over the 16 pairs k, products of bfloat16 values exact in float32.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace baton::amx {

constexpr int kRows = 16;      // rows per tile
constexpr int kRowBytes = 64;  // bytes per tile row

// The 64-byte LDTILECFG operand, palette 1: tiles 0-7 each kRows x kRowBytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) {
      colsb[t] = kRowBytes;
      rows[t] = kRows;
    }
  }
};
static_assert(sizeof(TileConfig) == 64);

// Same interface as AmxTiles, in memory. A tile used before this thread configured them, or
// after it released them, raises (on hardware that would fault).
struct EmulatedTiles {
  struct State {
    bool configured = false;
    TileConfig cfg;
    alignas(64) uint8_t tmm[8][kRows][kRowBytes];
  };
  static State& state() {
    thread_local State s;
    return s;
  }
  static uint8_t (*tile(int t))[kRowBytes] {
    State& s = state();
    TORCH_CHECK(s.configured, "AMX emulation: tile ", t, " used before LDTILECFG on this thread");
    TORCH_CHECK(s.cfg.rows[t] == kRows && s.cfg.colsb[t] == kRowBytes, "AMX emulation: tile ", t,
                " is configured ", int(s.cfg.rows[t]), " x ", s.cfg.colsb[t], " bytes");
    return s.tmm[t];
  }
  static void config(const TileConfig& cfg) {
    State& s = state();
    s.cfg = cfg;
    s.configured = true;
    std::memset(s.tmm, 0, sizeof(s.tmm));  // LDTILECFG zeroes the tiles
  }
  static void release() { state().configured = false; }
  template <int T>
  static void zero() {
    std::memset(tile(T), 0, kRows * kRowBytes);
  }
  template <int T>
  static void load(const void* base, int64_t stride) {
    auto* t = tile(T);
    for (int r = 0; r < kRows; ++r) std::memcpy(t[r], static_cast<const uint8_t*>(base) + r * stride, kRowBytes);
  }
  template <int T>
  static void store(void* base, int64_t stride) {
    auto* t = tile(T);
    for (int r = 0; r < kRows; ++r) std::memcpy(static_cast<uint8_t*>(base) + r * stride, t[r], kRowBytes);
  }
  // c (float32, 16 x 16) += a (16 rows x 16 bfloat16 pairs) . b (16 pair-rows x 16 pairs).
  template <int C, int A, int B>
  static void dp() {
    static_assert(C != A && C != B && A != B, "TDPBF16PS needs three distinct tiles");
    auto* c = tile(C);
    auto* a = tile(A);
    auto* b = tile(B);
    auto bf = [](const uint8_t* row, int i) {
      uint16_t v;
      std::memcpy(&v, row + 2 * i, 2);
      const uint32_t bits = uint32_t(v) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    };
    for (int m = 0; m < kRows; ++m) {
      float acc[kRowBytes / 4];
      std::memcpy(acc, c[m], sizeof(acc));
      for (int k = 0; k < kRowBytes / 4; ++k)
        for (int n = 0; n < kRowBytes / 4; ++n) {
          acc[n] += bf(a[m], 2 * k) * bf(b[k], 2 * n);
          acc[n] += bf(a[m], 2 * k + 1) * bf(b[k], 2 * n + 1);
        }
      std::memcpy(c[m], acc, sizeof(acc));
    }
  }
};

#if defined(__x86_64__)
#define BATON_TARGET_AMX "amx-tile,amx-bf16,avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"
#define BATON_AMX __attribute__((target(BATON_TARGET_AMX)))

// The instructions name their tiles as immediates (the intrinsics paste the number into the
// assembly), so each template index maps onto a literal here.
#define BATON_TILE_CASES(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7)

struct AmxTiles {
  BATON_AMX static void config(const TileConfig& cfg) { _tile_loadconfig(&cfg); }
  BATON_AMX static void release() { _tile_release(); }
  template <int T>
  BATON_AMX static void zero() {
#define BATON_ZERO(i) \
  if constexpr (T == i) _tile_zero(i);
    BATON_TILE_CASES(BATON_ZERO)
#undef BATON_ZERO
  }
  template <int T>
  BATON_AMX static void load(const void* base, int64_t stride) {
#define BATON_LOAD(i) \
  if constexpr (T == i) _tile_loadd(i, base, stride);
    BATON_TILE_CASES(BATON_LOAD)
#undef BATON_LOAD
  }
  template <int T>
  BATON_AMX static void store(void* base, int64_t stride) {
#define BATON_STORE(i) \
  if constexpr (T == i) _tile_stored(i, base, stride);
    BATON_TILE_CASES(BATON_STORE)
#undef BATON_STORE
  }
  // The kernel's layout: sums in tiles 0-3, weights in 4-5, inputs in 6-7.
  template <int C, int A, int B>
  BATON_AMX static void dp() {
    static_assert(C >= 0 && C <= 3 && (A == 4 || A == 5) && (B == 6 || B == 7), "tile roles: see amx_linear.cpp");
#define BATON_DP_A(c, a)                                    \
  if constexpr (C == c && A == a && B == 6) _tile_dpbf16ps(c, a, 6); \
  if constexpr (C == c && A == a && B == 7) _tile_dpbf16ps(c, a, 7);
#define BATON_DP(c) BATON_DP_A(c, 4) BATON_DP_A(c, 5)
    BATON_DP(0) BATON_DP(1) BATON_DP(2) BATON_DP(3)
#undef BATON_DP
#undef BATON_DP_A
  }
};
#undef BATON_TILE_CASES
#endif

}  // namespace baton::amx
