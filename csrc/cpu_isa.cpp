// CPU feature detection and the process-wide active kernel path; see cpu_isa.h.
#include "cpu_isa.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace baton::cpu {
namespace {

#if defined(__x86_64__)
// __builtin_cpu_supports checks the OS saves the AVX / AVX-512 register state (XCR0) too.
bool avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
bool avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool avx512_bf16() { return __builtin_cpu_supports("avx512bf16"); }

bool cpuid7_edx(int bit) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (d >> bit) & 1u;
}

// AMX-TILE (bit 24) and AMX-BF16 (22), the tile state enabled in XCR0 (bits 17-18), and
// Linux's per-process permission for it (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, Linux
// 5.16+): without it the first tile instruction faults. Asked once, at detection.
bool amx() {
  if (!cpuid7_edx(24) || !cpuid7_edx(22)) return false;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return false;  // OSXSAVE
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if (((lo >> 17) & 3u) != 3u) return false;
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}
#endif

Isa detect() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (avx2() && avx512() && avx512_bf16() && amx()) return Isa::kAmx;
  if (avx2() && avx512() && avx512_bf16()) return Isa::kAvx512Bf16;
  if (avx2() && avx512()) return Isa::kAvx512;
  if (avx2()) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

std::atomic<int>& active() {
  static std::atomic<int> level{static_cast<int>(default_isa())};
  return level;
}

constexpr const char* kNames[] = {"generic", "avx2", "avx512", "avx512bf16", "amx"};
constexpr int kLevels = sizeof(kNames) / sizeof(kNames[0]);

}  // namespace

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa default_isa() { return std::min(detected_isa(), Isa::kAvx512Bf16); }

Isa active_isa() { return static_cast<Isa>(active().load(std::memory_order_relaxed)); }

void set_active_isa(Isa isa) {
  TORCH_CHECK_VALUE(static_cast<int>(isa) <= static_cast<int>(detected_isa()), "CPU kernel path '",
                    isa_name(isa), "' needs instructions this CPU lacks; it runs up to '",
                    isa_name(detected_isa()), "'");
  active().store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) { return kNames[static_cast<int>(isa)]; }

Isa parse_isa(const std::string& name) {
  for (int i = 0; i < kLevels; ++i)
    if (name == kNames[i]) return static_cast<Isa>(i);
  TORCH_CHECK_VALUE(false, "unknown CPU kernel path '", name,
                    "'; valid: generic, avx2, avx512, avx512bf16, amx");
}

std::vector<std::string> runnable_isas() {
  std::vector<std::string> out;
  for (int i = 0; i <= static_cast<int>(detected_isa()); ++i) out.emplace_back(kNames[i]);
  return out;
}

std::vector<std::pair<std::string, bool>> cpu_features() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return {{"avx2", __builtin_cpu_supports("avx2") != 0},
          {"fma", __builtin_cpu_supports("fma") != 0},
          {"avx512f", __builtin_cpu_supports("avx512f") != 0},
          {"avx512bw", __builtin_cpu_supports("avx512bw") != 0},
          {"avx512vl", __builtin_cpu_supports("avx512vl") != 0},
          {"avx512dq", __builtin_cpu_supports("avx512dq") != 0},
          {"avx512_bf16", __builtin_cpu_supports("avx512bf16") != 0},
          {"amx_tile", cpuid7_edx(24)},
          {"amx_bf16", cpuid7_edx(22)},
          {"amx_int8", cpuid7_edx(25)}};
#else
  return {};
#endif
}

}  // namespace baton::cpu
