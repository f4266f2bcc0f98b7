// FMA throughput of this machine's cores, with 1 and with N OpenMP threads: a register-only
// loop of 10 independent 8-wide FMA chains per thread (no memory traffic). If N threads give
// no more than one, the vCPUs share a core's FMA units (SMT siblings), and compute-bound work
// (batched decode, prefill) cannot scale with threads on that machine.
//
//   g++ -O3 -mavx2 -mfma -fopenmp bench/kernels/fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak 1 2
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

static double gflops(int threads) {
  constexpr long kIters = 100000000L;
  constexpr int kChains = 10;  // enough independent chains to cover FMA latency x 2 pipes
  omp_set_num_threads(threads);
  float sink = 0;
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : sink)
  {
    const __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
    __m256 a[kChains];
    for (int i = 0; i < kChains; ++i) a[i] = _mm256_set1_ps(float(i));
    for (long it = 0; it < kIters; ++it)
#pragma GCC unroll 10
      for (int i = 0; i < kChains; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
    float s[8];
    __m256 t = a[0];
    for (int i = 1; i < kChains; ++i) t = _mm256_add_ps(t, a[i]);
    _mm256_storeu_ps(s, t);
    sink += s[0];
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (sink == 42.0f) std::printf(" ");  // keep the loop live
  return 2.0 * 8 * kChains * kIters * threads / sec / 1e9;
}

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const int threads = std::atoi(argv[i]);
    std::printf("threads %d: %.1f GFLOP/s (fp32 FMA)\n", threads, gflops(threads));
  }
  return 0;
}
