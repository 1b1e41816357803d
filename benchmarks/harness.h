// A small benchmark harness: each measurement runs its function once and VERIFIES the
// result before any timing (a wrong kernel is never timed), warms up, times N runs with
// std::chrono::steady_clock and reports the median (and min) with GFLOP/s or GB/s and the
// thread counts in use (lotgrad's and OpenBLAS's).
//
// Options (every benchmark adds them with add_harness_options; `--help` lists them):
//   --json          one JSON object per measurement on stdout, nothing else there
//   --runs N        timed runs per measurement (default 10)
//   --warmup N      untimed runs after verification (default 2)
//   --threads N     lotgrad::set_num_threads(N) first (lotgrad and OpenBLAS)
//   --filter TEXT   only measurements whose name contains TEXT
//   --quick         smaller shapes (a smoke test, for CI)
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <cblas.h>

#include <lotgrad/lotgrad.h>

#include "checks.h"   // tools/: after_parse
#include "options.h"  // tools/: CLI11, add_number, add_threads, parse

// Entry points (wired into `lotgrad bench matmul|ops`; also the `bench_core` executable).
// Return 0 on success, 1 if any verification failed, 2 on bad options.
int bench_matmul_main(int argc, char** argv);
int bench_ops_main(int argc, char** argv);
// `bench_core matmul|ops [options]`: dispatches on argv[1].
int bench_core_main(int argc, char** argv);

namespace lotgrad::bench {

struct Options {
  bool json = false, quick = false;
  int runs = 10, warmup = 2;
  int64_t threads = 0;  // 0: as the process starts (all cores, or LOTGRAD_NUM_THREADS)
  std::string filter;
};

// Adds --json --runs --warmup --threads --filter --quick to app, bound to o; o's values are
// the defaults the help shows (a benchmark may change them first).
inline void add_harness_options(CLI::App& app, Options& o) {
  const std::string g = "Harness";
  app.add_flag("--json", o.json, "one JSON object per measurement on stdout, nothing else there")->group(g);
  cli::add_number(app, "--runs", o.runs, 1, 1e6, "timed runs per measurement (the median is reported)")->group(g);
  cli::add_number(app, "--warmup", o.warmup, 0, 1e6, "untimed runs after verification")->group(g);
  cli::add_threads(app, o.threads)->default_str("")->group(g);
  app.add_option("--filter", o.filter, "only measurements whose name contains TEXT")->group(g);
  app.add_flag("--quick", o.quick, "smaller shapes (a smoke test, for CI)")->group(g);
}

// The process's peak resident memory (VmHWM), MB.
inline double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

// "" when every value of t is finite, else "<what> has a non-finite value".
inline std::string check_finite(const Tensor& t, const char* what) {
  for (double x : t.to_vector())
    if (!std::isfinite(x)) return std::string(what) + " has a non-finite value";
  return "";
}

// A comma-separated list of whole numbers, each in [lo, hi] (--n 512,1024,2048).
inline CLI::Option* add_int_list(CLI::App& app, const std::string& name, std::vector<int64_t>& v, double lo, double hi,
                                 const std::string& help) {
  return app.add_option(name, v, help)->delimiter(',')->check(cli::in_range(lo, hi, true))->capture_default_str();
}

// The shape of an attention benchmark's q, k, v (B, H, n, d): --n LIST, --batch, --heads and the
// head dimension (its option named by the benchmark: --d, --dim).
struct AttentionShape {
  std::vector<int64_t> ns = {512, 1024, 2048, 4096, 8192, 16384};
  int64_t batch = 1, heads = 2, dim = 32;
  CLI::Option* n_opt = nullptr;
  void add_options(CLI::App& app, const std::string& dim_option) {
    n_opt = add_int_list(app, "--n", ns, 1, 1 << 20, "comma-separated sequence lengths (--quick: 256,512)");
    cli::add_number(app, "--batch", batch, 1, 4096, "batch size");
    cli::add_number(app, "--heads", heads, 1, 4096, "heads");
    cli::add_number(app, "--" + dim_option, dim, 1, 4096, "head dimension");
  }
  // The lengths to run: --n when given, else the default list (shorter with --quick).
  std::vector<int64_t> lengths(bool quick) const {
    return quick && !n_opt->count() ? std::vector<int64_t>{256, 512} : ns;
  }
};

// A benchmark's command line and run: parses argv into app (cli::parse: 0 after --help, 2
// after a bad option, named), then returns body(); an exception from body is printed as
// "<app name>: error: <message>" and gives 1.
template <class F>
int run_bench(CLI::App& app, int argc, char** argv, F body) {
  if (int rc = cli::parse(app, argc, argv); rc >= 0) return rc;
  try {
    return body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", app.get_name().c_str(), e.what());
    return 1;
  }
}

// Result of one measurement. flops / bytes are per run (0 when not meaningful).
struct Measurement {
  std::string bench, name, impl;
  double median_s = 0, min_s = 0;
  int runs = 0;
  double flops = 0, bytes = 0;
  bool verified = false;
  std::string error;                                    // verification failure
  std::vector<std::pair<std::string, double>> extra;    // e.g. {"ratio_vs_blas", 1.03}
  std::vector<std::pair<std::string, std::string>> tags;  // e.g. {"shape", "(65536, 64)x(64, 192)"}
  double gflops() const { return flops > 0 && median_s > 0 ? flops / median_s * 1e-9 : 0; }
  double gbps() const { return bytes > 0 && median_s > 0 ? bytes / median_s * 1e-9 : 0; }
};

inline std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if ((unsigned char)c < 0x20) continue;
    o += c;
  }
  return o;
}

class Harness {
 public:
  Harness(std::string bench, Options opt) : bench_(std::move(bench)), opt_(std::move(opt)) {
    if (opt_.threads > 0) lotgrad::set_num_threads((int)opt_.threads);
    if (!opt_.json)
      std::printf("# %s: lotgrad threads %d, OpenBLAS threads %d, %d runs (median), %d warm-up\n", bench_.c_str(),
                  lotgrad::get_num_threads(), openblas_get_num_threads(), opt_.runs, opt_.warmup);
  }
  const Options& options() const { return opt_; }
  bool selected(const std::string& name) const { return opt_.filter.empty() || name.find(opt_.filter) != std::string::npos; }
  bool all_ok() const { return ok_; }

  // Runs fn once, then verify() (returns "" when the result is right, else what is wrong);
  // only a verified function is warmed up and timed. Not printed: call emit().
  Measurement measure(const std::string& name, const std::string& impl, const std::function<void()>& fn,
                      const std::function<std::string()>& verify, double flops, double bytes) {
    Measurement m;
    m.bench = bench_;
    m.name = name;
    m.impl = impl;
    m.flops = flops;
    m.bytes = bytes;
    try {
      fn();
      m.error = verify();
    } catch (const std::exception& e) {
      m.error = std::string("threw: ") + e.what();
    }
    m.verified = m.error.empty();
    if (!m.verified) {
      ok_ = false;
      return m;
    }
    for (int i = 0; i < opt_.warmup; ++i) fn();
    std::vector<double> t((size_t)opt_.runs);
    for (int i = 0; i < opt_.runs; ++i) {
      const auto a = std::chrono::steady_clock::now();
      fn();
      const auto b = std::chrono::steady_clock::now();
      t[(size_t)i] = std::chrono::duration<double>(b - a).count();
    }
    std::sort(t.begin(), t.end());
    m.runs = opt_.runs;
    m.min_s = t.front();
    m.median_s = t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
    return m;
  }

  void emit(const Measurement& m) const {
    if (opt_.json) {
      std::string s = "{\"bench\":\"" + json_escape(m.bench) + "\",\"name\":\"" + json_escape(m.name) + "\",\"impl\":\"" +
                      json_escape(m.impl) + "\",\"verified\":" + (m.verified ? "true" : "false");
      if (!m.verified) s += ",\"error\":\"" + json_escape(m.error) + "\"";
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    ",\"median_ms\":%.6g,\"min_ms\":%.6g,\"runs\":%d,\"gflops\":%.6g,\"gbps\":%.6g,\"threads\":%d,\"blas_threads\":%d",
                    m.median_s * 1e3, m.min_s * 1e3, m.runs, m.gflops(), m.gbps(), lotgrad::get_num_threads(),
                    openblas_get_num_threads());
      s += buf;
      for (const auto& [k, v] : m.tags) s += ",\"" + json_escape(k) + "\":\"" + json_escape(v) + "\"";
      for (const auto& [k, v] : m.extra) {
        std::snprintf(buf, sizeof buf, ",\"%s\":%.6g", json_escape(k).c_str(), v);
        s += buf;
      }
      std::printf("%s}\n", s.c_str());
    } else {
      if (!m.verified) {
        std::printf("%-44s %-10s VERIFICATION FAILED: %s\n", m.name.c_str(), m.impl.c_str(), m.error.c_str());
        return;
      }
      std::printf("%-44s %-10s %10.3f ms (min %8.3f)", m.name.c_str(), m.impl.c_str(), m.median_s * 1e3, m.min_s * 1e3);
      if (m.flops > 0) std::printf(" %8.1f GFLOP/s", m.gflops());
      if (m.bytes > 0) std::printf(" %8.1f GB/s", m.gbps());
      for (const auto& [k, v] : m.extra) std::printf("  %s %.3f", k.c_str(), v);
      std::printf("\n");
    }
    std::fflush(stdout);
  }

 private:
  std::string bench_;
  Options opt_;
  bool ok_ = true;
};

// Largest |a - b| / (atol + rtol |b|) over two equally long arrays; <= 1 means close.
template <class A, class B>
double closeness(const A* a, const B* b, int64_t n, double atol, double rtol) {
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::abs((double)a[i] - (double)b[i]) / (atol + rtol * std::abs((double)b[i]));
    if (!(d <= worst)) worst = d;  // NaN propagates
  }
  return worst;
}

}  // namespace lotgrad::bench
