// lotgrad bench allreduce [--sizes 4,1024,...] : under mpirun, the time of one in-place sum of
// a float buffer across the ranks (dist/comm.h, the call GradReducer makes per bucket), per
// size: median microseconds per call and the bus bandwidth 2 (N - 1) / N * bytes / time (what
// a ring all-reduce moves through each rank's link). Verified first: every element of the sum
// equals N (N + 1) / 2 when rank r puts r + 1. docs/distributed.md fits its latency-bandwidth
// cost model to these figures. One process: the sum is the buffer itself (N = 1).
#include <algorithm>
#include <cstdio>

#include <lotgrad/dist/comm.h>

#include "commands.h"
#include "harness.h"


int bench_allreduce_main(int argc, char** argv) {
  using namespace lotgrad;
  using namespace lotgrad::bench;
  CLI::App app("Sums a float buffer across the ranks of an mpirun (one in-place all-reduce per call): median time per\n"
               "call and bus bandwidth per size. Verified before timing: the sum of rank + 1 over the ranks.",
               "lotgrad bench allreduce");
  std::vector<int64_t> sizes = {4, 1024, 16384, 65536, 262144, 1048576, 4194304};
  app.add_option("--sizes", sizes, "buffer sizes in bytes (multiples of 4)")->delimiter(',');
  Options opt;
  opt.runs = 11;
  add_harness_options(app, opt);
  return run_bench(app, argc, argv, [&] {
    dist::Comm& comm = dist::Comm::world();
    if (comm.rank() != 0 && !std::freopen("/dev/null", "w", stdout)) return 1;  // rank 0 reports
    Harness h("allreduce", opt);
    const double N = comm.size();
    for (int64_t bytes : sizes) {
      if (bytes < 4 || bytes % 4) throw std::invalid_argument("bench allreduce: --sizes " + std::to_string(bytes) + " is not a positive multiple of 4");
      const int64_t n = bytes / 4;
      const int64_t reps = std::clamp<int64_t>((1 << 22) / bytes, 1, 200);  // calls per timed run: >= ~4 MB moved
      std::vector<float> buf((size_t)n);
      std::fill(buf.begin(), buf.end(), (float)(comm.rank() + 1));
      comm.allreduce_sum(buf.data(), n);
      const float want = (float)(N * (N + 1) / 2);
      const bool summed = buf[0] == want && buf[(size_t)n / 2] == want && buf[(size_t)n - 1] == want;
      const float got = buf[0];
      std::fill(buf.begin(), buf.end(), 0.0f);  // timed on zeros: repeated in-place sums stay 0
      Measurement m = h.measure(
          "allreduce " + std::to_string(bytes) + " B ranks=" + std::to_string(comm.size()), "mpi",
          [&] {
            for (int64_t r = 0; r < reps; ++r) comm.allreduce_sum(buf.data(), n);
          },
          [&]() -> std::string {
            if (!summed) return "the sum is " + std::to_string(got) + ", not " + std::to_string(want);
            return buf[0] == 0.0f && buf[(size_t)n - 1] == 0.0f ? "" : "a sum of zeros is not zero";
          },
          0, 0);
      const double per_call = m.median_s / (double)reps;
      m.extra.push_back({"us_per_call", per_call * 1e6});
      m.extra.push_back({"busbw_GBps", per_call > 0 && N > 1 ? 2 * (N - 1) / N * (double)bytes / per_call * 1e-9 : 0});
      h.emit(m);
    }
    return h.all_ok() ? 0 : 1;
  });
}
