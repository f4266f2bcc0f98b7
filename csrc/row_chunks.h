// Splitting a product's weight rows among threads for the skinny GEMM.
//
// Decode products are short (0.2-0.7 ms each at bench-0.5b size) and the two cores of a shared
// VM rarely stream at the same rate: with the rows cut into one equal range per thread, the
// thread that finished first spun in the OpenMP barrier for about a tenth of a bfloat16 decode
// step (perf, bench-0.5b, 2 threads). Here threads claim chunks of rows from a shared counter
// as they finish the last one, so the faster thread reads more: decode steps 3-5% faster at
// bench-0.5b size, batch 1 and 32 (A/B in turn in one process, 2 threads). Every output row is
// computed by the same code whichever thread takes it: results do not depend on the split.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>

namespace baton {

// Rows per chunk: about 1 MB of weights (for_row_chunks still gives each thread at least 4
// chunks), a multiple of 4, at least 16. Each chunk starts 4 new streams, and each start
// waits for the hardware prefetcher to ramp up: against 256 KB chunks, 1 MB ones made
// bench-0.5b decode steps 1.06x faster at batch 1 and 1.05x at batch 8 when the VM's memory
// read 60 GB/s, 1.00-1.02x when it read 35 GB/s; forced to avx2, 1.01-1.07x (bf16 and fp32;
// AVX-512 EPYC, 2 threads, in turn in one process). The chunks' whole products read at
// 98% of a plain 4-stream read at 55 GB/s, against 92% with 256 KB.
inline int64_t chunk_rows(int64_t K, int64_t elem_bytes) {
  const int64_t rows = (int64_t(1) << 20) / std::max<int64_t>(1, K * elem_bytes);
  return std::max<int64_t>(16, rows / 4 * 4);
}

// fn(n0, n1) over [0, N) in chunks of at most `chunk` rows, and at least 4 per thread. Serial
// (one call) with one thread, inside another parallel region, for fewer than 8 rows a thread,
// or under a sixteenth of a full chunk (64 KB of weights: less work than waking the other
// threads).
template <typename F>
void for_row_chunks(int64_t N, int64_t chunk, const F& fn) {
  const int threads = at::get_num_threads();
  if (threads <= 1 || at::in_parallel_region() || N < 8 * threads || 16 * N <= chunk) return fn(0, N);
  chunk = std::min(chunk, (N + 4 * threads - 1) / (4 * threads) + 3) / 4 * 4;
  std::atomic<int64_t> next{0};
  std::atomic_flag failed = ATOMIC_FLAG_INIT;
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
    try {
      c10::ParallelGuard guard(true);
      for (int64_t cur = next.fetch_add(chunk); cur < N; cur = next.fetch_add(chunk))
        fn(cur, std::min(N, cur + chunk));
    } catch (...) {
      if (!failed.test_and_set()) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// A thread's chunk [n0, n1) as the skinny GEMM reads it (rows() in skinny_body.inc): 4 equal
// runs side by side, block4(n, run) for each n in [n0, n0 + run) taking rows n, n + run,
// n + 2 run and n + 3 run; then single(n) for each of the last (n1 - n0) % 4 rows.
template <typename Block4, typename Single>
void for_row_runs(int64_t n0, int64_t n1, const Block4& block4, const Single& single) {
  const int64_t run = (n1 - n0) / 4;
  for (int64_t n = n0; n < n0 + run; ++n) block4(n, run);
  for (int64_t n = n0 + 4 * run; n < n1; ++n) single(n);
}

}  // namespace baton
