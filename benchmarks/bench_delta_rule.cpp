// `lotgrad bench delta-rule`: the delta_rule op (ops/delta_rule.h, DeltaNet's chunkwise WY
// form) alone, forward and forward + backward, on DeltaNet-shaped inputs: keys of unit norm,
// β in (0, 1), q scaled by 1/√d, f32. The same inputs and sizes as benchmarks/torch_deltanet.py
// (the same algorithm in PyTorch), so the two print comparable medians. Verified before timing:
// on the first head the first 96 positions equal the step-by-step recurrence
// (delta_rule_recurrent), and the outputs and gradients are finite.
#include <cmath>

#include <lotgrad/lotgrad.h>

#include "harness.h"

namespace lotgrad::bench {
namespace {

struct DeltaInputs {
  Tensor q, k, v, beta, gy;
};

DeltaInputs delta_inputs(int64_t B, int64_t H, int64_t n, int64_t d) {
  Generator g(n);
  auto unit = [](const Tensor& x) { return div(x, sqrt(sum(mul(x, x), {-1}, true))); };
  DeltaInputs in;
  in.q = mul(unit(randn({B, H, n, d}, g)), 1.0 / std::sqrt((double)d));
  in.k = unit(randn({B, H, n, d}, g));
  in.v = randn({B, H, n, d}, g);
  in.beta = sigmoid(randn({B, H, n}, g));
  in.gy = randn({B, H, n, d}, g);
  return in;
}

// The op's first `m` positions of head (0, 0) against the recurrence, in f64.
std::string check_against_recurrence(const DeltaInputs& in, const Tensor& out, int64_t m) {
  NoGradGuard ng;
  auto head = [&](const Tensor& t) { return t.narrow(0, 0, 1).narrow(1, 0, 1).narrow(2, 0, m).to(kFloat64); };
  const Tensor ref = delta_rule_recurrent(head(in.q), head(in.k), head(in.v), head(in.beta));
  const std::vector<double> a = head(out).to_vector(), b = ref.to_vector();
  for (size_t i = 0; i < a.size(); ++i)
    if (!(std::abs(a[i] - b[i]) <= 1e-4 + 1e-3 * std::abs(b[i])))
      return "differs from the recurrence at element " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " +
             std::to_string(b[i]);
  return "";
}

int run_delta_rule(const Options& opt, const std::vector<int64_t>& ns, int64_t B, int64_t H, int64_t d, int64_t C) {
  Harness h("delta-rule", opt);
  for (int64_t n : ns) {
    const DeltaInputs in = delta_inputs(B, H, n, d);
    Tensor out;
    auto verify = [&]() -> std::string {
      std::string e = check_finite(out, "output");
      return e.empty() ? check_against_recurrence(in, out, std::min<int64_t>(n, 96)) : e;
    };
    const std::string name = "B=" + std::to_string(B) + " H=" + std::to_string(H) + " n=" + std::to_string(n) +
                             " d=" + std::to_string(d) + " chunk=" + std::to_string(C);
    // flops: per chunk ≈ the C×C and C×d products, 2·n·(3·C·d + 4·d²) forward
    const double fwd_flops = 2.0 * B * H * n * (3.0 * C * d + 4.0 * d * d);
    reset_storage_peak();
    int64_t base = storage_bytes_in_use();
    Measurement mf = h.measure(name, "fwd", [&] { NoGradGuard ng; out = delta_rule(in.q, in.k, in.v, in.beta, C); },
                               verify, fwd_flops, 0);
    mf.extra.push_back({"peak_MB", (storage_bytes_peak() - base) / 1048576.0});
    h.emit(mf);
    Tensor q = in.q.detach().requires_grad_(), k = in.k.detach().requires_grad_(), v = in.v.detach().requires_grad_(),
           beta = in.beta.detach().requires_grad_();
    reset_storage_peak();
    base = storage_bytes_in_use();
    Measurement mb = h.measure(name, "fwd+bwd", [&] {
      for (Tensor* t : {&q, &k, &v, &beta}) t->zero_grad();
      Tensor y = delta_rule(q, k, v, beta, C);
      y.backward(in.gy);
      out = y.detach();
    }, [&]() -> std::string {
      std::string e = verify();
      for (const Tensor* t : {&q, &k, &v, &beta})
        if (e.empty()) e = check_finite(t->grad(), "a gradient");
      return e;
    }, 3 * fwd_flops, 0);
    mb.extra.push_back({"peak_MB", (storage_bytes_peak() - base) / 1048576.0});
    mb.extra.push_back({"rss_MB", peak_rss_mb()});
    h.emit(mb);
  }
  return h.all_ok() ? 0 : 1;
}
}  // namespace
}  // namespace lotgrad::bench

int bench_delta_rule_main(int argc, char** argv) {
  using namespace lotgrad;
  using namespace lotgrad::bench;
  CLI::App app("The delta_rule op (DeltaNet's chunkwise WY form) alone: forward and forward+backward time and peak\n"
               "memory on DeltaNet-shaped inputs (unit keys, beta in (0, 1)), f32; the sizes of\n"
               "benchmarks/torch_deltanet.py. Verified before timing: the first head's first 96 positions equal the\n"
               "step-by-step recurrence. --json: one JSON object per measurement.",
               "lotgrad bench delta-rule");
  std::vector<int64_t> ns = {4096};
  int64_t B = 2, H = 8, d = 64, C = 64;
  add_int_list(app, "--n", ns, 1, 1 << 20, "comma-separated sequence lengths (--quick: 256)");
  cli::add_number(app, "--batch", B, 1, 4096, "batch size");
  cli::add_number(app, "--heads", H, 1, 4096, "heads");
  cli::add_number(app, "--d", d, 1, 4096, "head dimension (keys and values)");
  cli::add_number(app, "--chunk", C, 1, 65536, "positions per chunk");
  Options opt;
  opt.runs = 5;
  add_harness_options(app, opt);
  return run_bench(app, argc, argv, [&] { return run_delta_rule(opt, opt.quick ? std::vector<int64_t>{256} : ns, B, H, d, C); });
}
