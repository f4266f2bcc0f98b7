// Which instruction-set path the CPU kernels (skinny GEMM, paged decode attention, RMSNorm)
// run: detected once per process from CPUID, lowered on request (kernels/cpu_isa.py applies
// BATON_CPU_ISA), read by every kernel call.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace baton::cpu {

// Ordered: each level runs on every CPU that runs the ones above it.
//   generic     portable C++ (SSE2 at most on x86-64), any CPU
//   avx2        AVX2 + FMA, 8 floats per register
//   avx512      AVX-512 F/BW/VL/DQ, 16 floats per register
//   avx512bf16  avx512 + AVX512_BF16: bf16 x bf16 products with vdpbf16ps
//   amx         avx512bf16 + AMX-TILE/AMX-BF16 (and the OS's permission to use the tiles):
//               batched bf16 products on tiles (amx_linear.cpp)
enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };

// The best level this CPU (and OS) runs.
Isa detected_isa();
// The level a process starts on: detected_isa(), except that amx is opt-in (set_active_isa,
// BATON_CPU_ISA=amx) until an AMX CPU has measured it; such a CPU starts on avx512bf16.
Isa default_isa();
// The level the kernels use now (default_isa() until set_active_isa).
Isa active_isa();
// Sets the active level; throws c10::ValueError when the CPU lacks it.
void set_active_isa(Isa isa);

const char* isa_name(Isa isa);
// Parses a level name; throws c10::ValueError naming the valid ones.
Isa parse_isa(const std::string& name);
// Every level this CPU runs, lowest first.
std::vector<std::string> runnable_isas();
// CPU features relevant to the paths, as (name, present), in /proc/cpuinfo spelling.
std::vector<std::pair<std::string, bool>> cpu_features();

}  // namespace baton::cpu
