// `lotgrad bench sinkhorn`: forward and forward+backward time (median) and peak memory of
// the Sinkhorn op against n (1k..64k), m (4..64) and half-steps (10..200), for both
// gradient modes, f32, C = -Q Z^T / sqrt(d) + noise-free LOTFormer-like costs, eps = 0.1.
// Reported per measurement (extra fields):
//   peak_storage_mb   high-water mark of lotgrad tensor storage during one run
//   extra_storage_mb  the same minus what was in use before the run (the cost, upstream grad)
//   vmhwm_mb          process peak RSS (VmHWM) during one run, reset first via clear_refs
//   bwd_over_fwd      (fwd+bwd time - fwd time) / fwd time (fwd+bwd rows only)
// Every configuration is verified before it is timed: finite outputs, exact row sums of
// the plan (last = rows), finite gradients whose row sums vanish in implicit mode.
#include <cstdio>
#include <fstream>
#include <string>

#include "harness.h"

int bench_sinkhorn_main(int argc, char** argv);

namespace {

using namespace lotgrad;
using lotgrad::bench::Harness;
using lotgrad::bench::Measurement;

double vmhwm_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  return 0;
}
void reset_vmhwm() {
  std::ofstream f("/proc/self/clear_refs");
  if (f) f << "5";
}

struct Case {
  int64_t n, m, steps;
};

int run(const bench::Options& opt);
}  // namespace

int bench_sinkhorn_main(int argc, char** argv) {
  CLI::App app("The Sinkhorn op: forward and forward+backward time (median) and peak memory against n (1k..64k),\n"
               "m (4..64) and half-steps (10..200), both gradient modes, f32, eps = 0.1; every configuration verified\n"
               "before it is timed. --json: one JSON object per measurement.",
               "lotgrad bench sinkhorn");
  bench::Options opt;
  bench::add_harness_options(app, opt);
  return bench::run_bench(app, argc, argv, [&] { return run(opt); });
}

namespace {
int run(const bench::Options& opt) {
  Harness h("sinkhorn", opt);
  std::vector<Case> cases;
  if (opt.quick) {
    cases = {{1024, 8, 10}, {4096, 32, 50}};
  } else {
    for (int64_t n : {1024, 4096, 16384, 65536}) cases.push_back({n, 32, 50});
    for (int64_t m : {4, 16, 64}) cases.push_back({16384, m, 50});
    for (int64_t t : {10, 100, 200}) cases.push_back({16384, 32, t});
  }
  const double eps = 0.1;
  for (const Case& c : cases) {
    Generator gen(7);
    const int64_t d = 32;
    // C = -Q Z^T / sqrt(d) built by hand (f32), and a fixed upstream gradient.
    Tensor Q = randn({c.n, d}, gen, kFloat32), Z = randn({c.m, d}, gen, kFloat32);
    Tensor C = Tensor::empty({c.n, c.m}, kFloat32);
    {
      const float* qp = Q.data_ptr<float>();
      const float* zp = Z.data_ptr<float>();
      float* cp = C.data_ptr<float>();
      for (int64_t i = 0; i < c.n; ++i)
        for (int64_t j = 0; j < c.m; ++j) {
          float s = 0;
          for (int64_t t = 0; t < d; ++t) s += qp[i * d + t] * zp[j * d + t];
          cp[i * c.m + j] = -s / std::sqrt((float)d);
        }
    }
    Q = Tensor();
    Tensor G = randn({c.n, c.m}, gen, kFloat32);
    for (auto mode : {SinkhornGrad::implicit, SinkhornGrad::unrolled}) {
      const std::string mname = mode == SinkhornGrad::implicit ? "implicit" : "unrolled";
      SinkhornOptions o;
      o.max_half_steps = c.steps;
      o.last = SinkhornSide::rows;
      o.grad = mode;
      const std::string base = "n=" + std::to_string(c.n) + " m=" + std::to_string(c.m) + " T=" + std::to_string(c.steps);
      double fwd_med = 0;
      for (int phase = 0; phase < 2; ++phase) {
        const std::string name = base + (phase == 0 ? " fwd" : " fwd+bwd");
        if (!h.selected(name + " " + mname)) continue;
        Tensor Cl = C.detach();
        if (phase == 1) Cl.requires_grad_();
        SinkhornResult res;
        auto fn = [&] {
          Cl.zero_grad();
          res = sinkhorn(Cl, Tensor(), Tensor(), eps, o);
          if (phase == 1) res.plan.backward(G);
        };
        auto verify = [&]() -> std::string {
          std::vector<double> P = res.plan.to_vector();
          for (int64_t i = 0; i < c.n; ++i) {
            double s = 0;
            for (int64_t j = 0; j < c.m; ++j) {
              if (!std::isfinite(P[i * c.m + j])) return "plan not finite";
              s += P[i * c.m + j];
            }
            if (std::abs(s * c.n - 1.0) > 1e-4) return "row sum " + std::to_string(s * c.n) + " * 1/n";
          }
          if (phase == 1) {
            std::vector<double> g = Cl.grad().to_vector();
            double mx = 0, worst_row = 0;
            for (int64_t i = 0; i < c.n; ++i) {
              double s = 0;
              for (int64_t j = 0; j < c.m; ++j) {
                if (!std::isfinite(g[i * c.m + j])) return "gradient not finite";
                mx = std::max(mx, std::abs(g[i * c.m + j]));
                s += g[i * c.m + j];
              }
              worst_row = std::max(worst_row, std::abs(s));
            }
            if (mode == SinkhornGrad::implicit && worst_row > 1e-3 * mx * c.m) return "implicit dC row sums not zero";
          }
          return "";
        };
        Measurement m = h.measure(name, mname, fn, verify, 0, 0);
        if (m.verified) {
          res = SinkhornResult();
          Cl.zero_grad();
          const int64_t before = storage_bytes_in_use();
          reset_storage_peak();
          reset_vmhwm();
          fn();
          m.extra.push_back({"peak_storage_mb", storage_bytes_peak() / 1048576.0});
          m.extra.push_back({"extra_storage_mb", (storage_bytes_peak() - before) / 1048576.0});
          m.extra.push_back({"vmhwm_mb", vmhwm_mb()});
          if (phase == 0) fwd_med = m.median_s;
          else if (fwd_med > 0) m.extra.push_back({"bwd_over_fwd", (m.median_s - fwd_med) / fwd_med});
        }
        m.tags.push_back({"mode", mname});
        m.tags.push_back({"phase", phase == 0 ? "fwd" : "fwd+bwd"});
        m.extra.push_back({"n", (double)c.n});
        m.extra.push_back({"m", (double)c.m});
        m.extra.push_back({"half_steps", (double)c.steps});
        h.emit(m);
      }
    }
  }
  return h.all_ok() ? 0 : 1;
}
}  // namespace
