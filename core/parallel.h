// The one owner of threads. lotgrad links the OpenMP build of OpenBLAS, so BLAS and
// lotgrad's loops share one OpenMP pool; set_num_threads() sets both. BLAS is never called
// from inside a parallel region (kernels parallelise either around BLAS or inside it).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace lotgrad {

void set_num_threads(int n);  // n >= 1
int get_num_threads();
// Refuses a LOTGRAD_NUM_THREADS that is set but not an integer in [1, cores] (the library
// itself ignores such a value; the command-line program calls this first).
void check_thread_env();

// Work below this many elements runs on one thread (thread start-up costs ~µs).
constexpr int64_t kParallelGrain = 32768;

// Calls f(begin_i, end_i) on contiguous chunks of [begin, end). Chunks depend only on the
// range and the thread count, so results are deterministic for a fixed thread count.
template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, F&& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  const int nt = get_num_threads();
  if (nt <= 1 || n <= grain || omp_in_parallel()) {
    f(begin, end);
    return;
  }
  const int64_t chunks = std::min<int64_t>(nt, (n + grain - 1) / std::max<int64_t>(grain, 1));
#pragma omp parallel num_threads((int)chunks)
  {
    const int64_t t = omp_get_thread_num();
    const int64_t nth = omp_get_num_threads();
    const int64_t b = begin + n * t / nth, e = begin + n * (t + 1) / nth;
    if (b < e) f(b, e);
  }
}

}  // namespace lotgrad
