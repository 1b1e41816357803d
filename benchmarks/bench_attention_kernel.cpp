// Softmax attention, fused tiled kernel vs the composite reference: forward and
// forward+backward time (median) and peak memory against n, at B=1, H=2, d=32 (f32); full,
// causal (--causal) or sliding-window (--window W, causal or symmetric) attention.
//
// Memory, per implementation and n, from one extra forward+backward after timing:
//   peak_storage_mb  high-water mark of lotgrad tensor storage during the step (inputs,
//                    dO, output, saved tensors, scratch, gradients);
//   extra_storage_mb the same minus what was in use before the step (q, k, v, dO);
//   vmhwm_mb         the process's peak RSS (VmHWM) during the step, reset before it by
//                    writing 5 to /proc/self/clear_refs (comparable to PyTorch's peak RSS).
// Verification before timing: against the reference path (output and gradients) for
// n <= 2048, else sampled output rows against a naive double-precision computation.
//
// Options (besides the harness's --json --runs --warmup --threads --filter --quick):
//   --n LIST        comma-separated sequence lengths (default 512,1024,2048,4096,8192,16384)
//   --batch B --heads H --dim d   (defaults 1, 2, 32)
//   --max-ref N     largest n for the reference path (default 8192; it holds (B, H, n, n))
//   --causal        causal attention (query i sees keys j <= i)
//   --window W      sliding-window attention: keys within W of the query (with --causal,
//                   0 <= i - j < W; else |i - j| < W); 0 (the default): no window
// GFLOP/s count only the (query, key) pairs inside the band (causal: about half of n²).
#include <cstring>
#include <fstream>

#include "../ops/attention.h"
#include "harness.h"

int bench_attention_kernel_main(int argc, char** argv);

namespace {

using namespace lotgrad;

double vmhwm_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;  // kB
  return 0;
}
void reset_vmhwm() {
  std::ofstream f("/proc/self/clear_refs");
  if (f) f << "5";
}

// Which keys each query sees: all, causal, or a sliding window (window > 0).
struct Band {
  bool causal = false;
  int64_t window = 0;
  // The keys [lo, hi] of query i among m.
  std::pair<int64_t, int64_t> keys(int64_t i, int64_t m) const {
    int64_t lo = 0, hi = m - 1;
    if (causal) hi = std::min(hi, i);
    if (window > 0) {
      lo = std::max<int64_t>(0, i - window + 1);
      if (!causal) hi = std::min(hi, i + window - 1);
    }
    return {lo, hi};
  }
  // (query, key) pairs in the band for n queries and n keys.
  double pairs(int64_t n) const {
    double p = 0;
    for (int64_t i = 0; i < n; ++i) p += (double)std::max<int64_t>(0, keys(i, n).second - keys(i, n).first + 1);
    return p;
  }
  std::string tag() const {
    std::string t = window > 0 ? " window=" + std::to_string(window) : "";
    return causal ? t + " causal" : t;
  }
  Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, bool fused) const {
    if (window > 0) return sliding_window_attention(q, k, v, window, causal, Tensor(), NAN, fused);
    return scaled_dot_product_attention(q, k, v, Tensor(), causal, NAN, fused);
  }
};

// Naive double-precision output row i of head (b, h), over the keys of its band.
std::vector<double> naive_row(const Tensor& q, const Tensor& k, const Tensor& v, const Band& band, int64_t bh, int64_t i) {
  const int64_t n = q.size(2), m = k.size(2), d = q.size(3);
  const float* qp = q.data_ptr<float>() + (bh * n + i) * d;
  const float* kp = k.data_ptr<float>() + bh * m * d;
  const float* vp = v.data_ptr<float>() + bh * m * d;
  const auto [lo, hi] = band.keys(i, m);
  std::vector<double> s((size_t)m), o((size_t)d, 0.0);
  double mx = -INFINITY, l = 0;
  for (int64_t j = lo; j <= hi; ++j) {
    double a = 0;
    for (int64_t c = 0; c < d; ++c) a += (double)qp[c] * kp[j * d + c];
    s[(size_t)j] = a / std::sqrt((double)d);
    mx = std::max(mx, s[(size_t)j]);
  }
  for (int64_t j = lo; j <= hi; ++j) {
    const double p = std::exp(s[(size_t)j] - mx);
    l += p;
    for (int64_t c = 0; c < d; ++c) o[(size_t)c] += p * vp[j * d + c];
  }
  for (auto& x : o) x /= l;
  return o;
}

int run(const bench::Options& opt, const std::vector<int64_t>& ns, int64_t B, int64_t H, int64_t d, int64_t max_ref,
        const Band& band);
}  // namespace

int bench_attention_kernel_main(int argc, char** argv) {
  using namespace lotgrad::bench;
  CLI::App app("Softmax attention, the fused tiled kernel against the composite reference: forward and\n"
               "forward+backward time (median) and peak memory against n (f32); full, causal or sliding-window.\n"
               "Verified before timing: against the reference for n <= 2048, else sampled rows against a naive\n"
               "double-precision computation. --json: one JSON object per measurement.",
               "lotgrad bench attention-kernel");
  AttentionShape shape;
  int64_t max_ref = 8192;
  Band band;
  Options opt;
  shape.add_options(app, "dim");
  cli::add_number(app, "--max-ref", max_ref, 0, 1 << 20, "largest n for the reference path (it holds (B, H, n, n))");
  app.add_flag("--causal", band.causal, "causal attention: query i sees keys j <= i");
  cli::add_number(app, "--window", band.window, 0, 1 << 20,
                  "sliding window: keys within W of the query (--causal: 0 <= i-j < W, else |i-j| < W); 0: none");
  add_harness_options(app, opt);
  return run_bench(app, argc, argv, [&] {
    return run(opt, shape.lengths(opt.quick), shape.batch, shape.heads, shape.dim, max_ref, band);
  });
}

namespace {
int run(const bench::Options& opt, const std::vector<int64_t>& ns, int64_t B, int64_t H, int64_t d, int64_t max_ref,
        const Band& band) {
  using namespace lotgrad::bench;
  bool ok = true;
  for (const int64_t n : ns) {
    // Long sequences: fewer runs (the reference takes seconds per step there).
    Options o = opt;
    if (n >= 8192) {
      o.runs = std::min(o.runs, 3);
      o.warmup = std::min(o.warmup, 1);
    }
    Harness h("attention_kernel", o);
    Generator gen(1234 + (uint64_t)n);
    Tensor q = randn({B, H, n, d}, gen), k = randn({B, H, n, d}, gen), v = randn({B, H, n, d}, gen);
    Tensor dout = randn({B, H, n, d}, gen);
    q.requires_grad_();
    k.requires_grad_();
    v.requires_grad_();
    const double pairs = band.pairs(n);
    const double fwd_flops = 4.0 * B * H * pairs * d;  // q kᵀ and P v
    const double bwd_flops = 8.0 * B * H * pairs * d;  // dV, dP, dQ, dK (recomputation not counted)

    // Reference results for verification (small n only).
    std::vector<double> ref_out, ref_dq, ref_dk, ref_dv;
    if (n <= 2048) {
      Tensor out = band.attend(q, k, v, false);
      out.backward(dout);
      ref_out = out.to_vector();
      ref_dq = q.grad().to_vector();
      ref_dk = k.grad().to_vector();
      ref_dv = v.grad().to_vector();
    }
    auto close = [](const std::vector<double>& a, const std::vector<double>& b, const char* what) -> std::string {
      const double c = closeness(a.data(), b.data(), (int64_t)a.size(), 1e-4, 1e-3);
      return c <= 1.0 ? "" : std::string(what) + " differs from the reference (closeness " + std::to_string(c) + ")";
    };

    for (const bool fused : {true, false}) {
      if (!fused && n > max_ref) continue;
      const std::string impl = fused ? "fused" : "reference";
      const std::string tag = "B=" + std::to_string(B) + " H=" + std::to_string(H) + " n=" + std::to_string(n) +
                              " d=" + std::to_string(d) + band.tag();
      Tensor out;
      auto forward = [&] { out = band.attend(q, k, v, fused); };
      auto step = [&] {
        q.zero_grad();
        k.zero_grad();
        v.zero_grad();
        forward();
        out.backward(dout);
      };
      auto verify_out = [&]() -> std::string {
        if (!ref_out.empty()) return close(out.to_vector(), ref_out, "output");
        const std::vector<double> o = out.to_vector();
        for (int64_t bh : {int64_t(0), B * H - 1})
          for (int64_t i : {int64_t(0), n / 3, n - 1}) {
            const std::vector<double> r = naive_row(q.detach(), k.detach(), v.detach(), band, bh, i);
            std::vector<double> got(o.begin() + (bh * n + i) * d, o.begin() + (bh * n + i + 1) * d);
            if (std::string e = close(got, r, "sampled output row"); !e.empty()) return e;
          }
        return "";
      };
      auto verify_step = [&]() -> std::string {
        if (std::string e = verify_out(); !e.empty()) return e;
        if (!ref_out.empty()) {
          for (auto [t, r, w] : {std::tuple{&q, &ref_dq, "dq"}, {&k, &ref_dk, "dk"}, {&v, &ref_dv, "dv"}})
            if (std::string e = close(t->grad().to_vector(), *r, w); !e.empty()) return e;
          return "";
        }
        for (const Tensor* t : {&q, &k, &v})
          for (double x : t->grad().to_vector())
            if (!std::isfinite(x)) return "non-finite gradient";
        return "";
      };

      const std::string fwd_name = "attention fwd " + tag, step_name = "attention fwd+bwd " + tag;
      if (h.selected(fwd_name)) {
        Measurement m = h.measure(fwd_name, impl, forward, verify_out, fwd_flops, 0);
        m.tags.push_back({"pass", "fwd"});
        m.extra.push_back({"n", (double)n});
        h.emit(m);
      }
      out = Tensor();
      if (h.selected(step_name)) {
        Measurement m = h.measure(step_name, impl, step, verify_step, fwd_flops + bwd_flops, 0);
        out = Tensor();
        if (m.verified) {
          q.zero_grad();
          k.zero_grad();
          v.zero_grad();
          const int64_t base = storage_bytes_in_use();
          reset_storage_peak();
          reset_vmhwm();
          step();
          out = Tensor();
          m.extra.push_back({"peak_storage_mb", storage_bytes_peak() / 1048576.0});
          m.extra.push_back({"extra_storage_mb", (storage_bytes_peak() - base) / 1048576.0});
          m.extra.push_back({"vmhwm_mb", vmhwm_mb()});
        }
        m.tags.push_back({"pass", "fwd+bwd"});
        m.extra.push_back({"n", (double)n});
        h.emit(m);
      }
    }
    ok = ok && h.all_ok();
  }
  return ok ? 0 : 1;
}
}  // namespace
