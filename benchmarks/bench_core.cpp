// Core benchmarks.
//   matmul: lotgrad matmul / linear at transformer shapes against cblas_sgemm called
//           directly on the same buffers; reports both and the ratio lotgrad / BLAS
//           (the goal is <= 1.10).
//   ops:    elementwise add, gelu, exp, sigmoid, tanh and softplus, softmax, log_softmax and layer_norm throughput in
//           GB/s (bytes that must move: inputs read once, output written once), next to
//           memcpy as the machine's copy bandwidth.
#include <cstring>
#include <memory>

#include "harness.h"

using namespace lotgrad;
using namespace lotgrad::bench;

namespace {

Tensor randn32(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return randn(s, g, kFloat32);
}

// ---- matmul -------------------------------------------------------------------------
// C[b] = op(A[b]) . op(B[b]) for b < batch (batch 0: plain 2-d, no batch dim). A is stored
// (n, k), or (k, n) when ta; B is stored (k, m), or (m, k) when tb; a_batched / b_batched
// say whether the operand has a batch dim or is shared.
struct MMCase {
  std::string name;
  int64_t batch, n, k, m;
  bool ta = false, tb = false;
  bool b_batched = true;
  bool linear = false;  // lotgrad::linear(x, W, bias) with W (m, k): tb must be true
};

std::string mm_shape(const MMCase& c) {
  auto s = [](int64_t r, int64_t q, bool t) { return t ? "(" + std::to_string(q) + ", " + std::to_string(r) + ")T" : "(" + std::to_string(r) + ", " + std::to_string(q) + ")"; };
  std::string bp = c.batch ? std::to_string(c.batch) + "x" : "";
  return bp + s(c.n, c.k, c.ta) + " . " + (c.b_batched && c.batch ? bp : "") + s(c.k, c.m, c.tb);
}

void run_matmul_case(Harness& h, const MMCase& c) {
  const int64_t nb = std::max<int64_t>(c.batch, 1);
  Shape as = c.ta ? Shape{c.k, c.n} : Shape{c.n, c.k};
  Shape bs = c.tb ? Shape{c.m, c.k} : Shape{c.k, c.m};
  if (c.batch) as.insert(as.begin(), c.batch);
  if (c.batch && c.b_batched) bs.insert(bs.begin(), c.batch);
  const Tensor A = randn32(as, 1), Bm = randn32(bs, 2);
  const Tensor bias = c.linear ? randn32({c.m}, 3) : Tensor();
  // Operands as lotgrad sees them: transposes are views of the stored buffers.
  const Tensor a = c.ta ? A.transpose(-1, -2) : A;
  const Tensor b = c.tb ? Bm.transpose(-1, -2) : Bm;
  const float* ap = A.data_ptr<float>();
  const float* bp = Bm.data_ptr<float>();
  std::vector<float> craw((size_t)(nb * c.n * c.m));
  const int lda = (int)(c.ta ? c.n : c.k), ldb = (int)(c.tb ? c.k : c.m);
  const int64_t sa = c.n * c.k, sb = c.b_batched ? c.k * c.m : 0, sc = c.n * c.m;
  const float* biasp = c.linear ? bias.data_ptr<float>() : nullptr;
  auto raw_into = [&](float* cp) {
    float beta = 0.0f;
    if (biasp) {  // what a fused linear must do: bias rows first, GEMM accumulates
      for (int64_t i = 0; i < nb * c.n; ++i) std::memcpy(cp + i * c.m, biasp, sizeof(float) * (size_t)c.m);
      beta = 1.0f;
    }
    for (int64_t i = 0; i < nb; ++i)
      cblas_sgemm(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans, (int)c.n, (int)c.m, (int)c.k,
                  1.0f, ap + i * sa, lda, bp + i * sb, ldb, beta, cp + i * sc, (int)c.m);
  };
  auto raw = [&] { raw_into(craw.data()); };
  // The same calls into a freshly allocated lotgrad tensor each run: separates the cost of
  // a new output buffer (page faults on first touch) from lotgrad's own overhead.
  const Shape out_shape = c.batch ? Shape{c.batch, c.n, c.m} : Shape{c.n, c.m};
  Tensor fresh;
  auto raw_alloc = [&] {
    fresh = make_tensor(out_shape, kFloat32);
    raw_into(fresh.data_ptr<float>());
  };
  // Folding a shared B is lotgrad's business; raw BLAS here mirrors the natural call:
  // one GEMM when there is no batch, one per batch entry otherwise.
  Tensor out;
  auto ours = [&] { out = c.linear ? linear(a, Bm, bias) : matmul(a, b); };

  // Verify raw BLAS against double-precision dot products at sampled entries.
  auto verify_raw = [&]() -> std::string {
    Generator g(11);
    for (int s = 0; s < 64; ++s) {
      const int64_t bi = g.randint(0, nb), i = g.randint(0, c.n), j = g.randint(0, c.m);
      double acc = biasp ? biasp[j] : 0.0;
      for (int64_t p = 0; p < c.k; ++p) {
        const double av = c.ta ? ap[bi * sa + p * c.n + i] : ap[bi * sa + i * c.k + p];
        const double bv = c.tb ? bp[bi * sb + j * c.k + p] : bp[bi * sb + p * c.m + j];
        acc += av * bv;
      }
      const double got = craw[(size_t)(bi * sc + i * c.m + j)];
      if (std::abs(got - acc) > 1e-3 * (1 + std::abs(acc)))
        return "raw sgemm entry (" + std::to_string(bi) + ", " + std::to_string(i) + ", " + std::to_string(j) + ") = " +
               std::to_string(got) + ", expected " + std::to_string(acc);
    }
    return "";
  };
  auto verify_ours = [&]() -> std::string {
    raw();
    Shape want = c.batch ? Shape{c.batch, c.n, c.m} : Shape{c.n, c.m};
    if (out.shape() != want) return "lotgrad result has shape " + shape_str(out.shape()) + ", expected " + shape_str(want);
    if (!out.is_contiguous()) return "lotgrad result is not contiguous";
    const double w = closeness(out.data_ptr<float>(), craw.data(), (int64_t)craw.size(), 1e-4, 1e-4);
    if (!(w <= 1.0)) return "lotgrad differs from raw sgemm (closeness " + std::to_string(w) + ")";
    return "";
  };
  const double flops = 2.0 * (double)nb * (double)c.n * (double)c.k * (double)c.m;
  auto verify_alloc = [&]() -> std::string {
    raw();
    return std::memcmp(fresh.data_ptr<float>(), craw.data(), sizeof(float) * craw.size()) ? "sgemm into a fresh tensor differs" : "";
  };
  Measurement mr = h.measure(c.name, "openblas", raw, verify_raw, flops, 0);
  Measurement ma = h.measure(c.name, "blas+alloc", raw_alloc, verify_alloc, flops, 0);
  Measurement ml = h.measure(c.name, "lotgrad", ours, verify_ours, flops, 0);
  for (Measurement* m : {&mr, &ma, &ml}) m->tags.push_back({"shape", mm_shape(c)});
  if (mr.verified && ml.verified) ml.extra.push_back({"ratio_vs_blas", ml.median_s / mr.median_s});
  if (ma.verified && ml.verified) ml.extra.push_back({"ratio_vs_blas_alloc", ml.median_s / ma.median_s});
  h.emit(mr);
  h.emit(ma);
  h.emit(ml);
}

// ---- ops ----------------------------------------------------------------------------
void run_ops(Harness& h) {
  const bool q = h.options().quick;
  const int64_t N = q ? (1 << 20) : (1 << 24);  // 16M floats = 64 MB per operand
  const Tensor a = randn32({N}, 1), b = randn32({N}, 2);
  const float* ap = a.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  Tensor out;
  auto sampled = [&](auto ref, const char* what) -> std::string {
    if (out.numel() != N) return std::string(what) + ": wrong size";
    const float* o = out.data_ptr<float>();
    for (int64_t i = 0; i < N; i += 9973) {
      const double want = ref(i);
      if (std::abs(o[i] - want) > 1e-5 * (1 + std::abs(want)))
        return std::string(what) + " at " + std::to_string(i) + ": " + std::to_string(o[i]) + " vs " + std::to_string(want);
    }
    return "";
  };
  const double fb = 4.0 * (double)N;  // bytes per f32 operand

  if (h.selected("memcpy")) {
    std::unique_ptr<float[]> dst(new float[(size_t)N]);
    auto fn = [&] { std::memcpy(dst.get(), ap, sizeof(float) * (size_t)N); };
    auto ver = [&]() -> std::string { return std::memcmp(dst.get(), ap, sizeof(float) * (size_t)N) ? "memcpy mismatch" : ""; };
    Measurement m = h.measure("memcpy " + std::to_string(N) + " f32", "libc", fn, ver, 0, 2 * fb);
    h.emit(m);
  }
  if (h.selected("add")) {
    Measurement m = h.measure("add " + std::to_string(N) + " f32", "lotgrad", [&] { out = add(a, b); },
                              [&] { return sampled([&](int64_t i) { return (double)ap[i] + bp[i]; }, "add"); }, (double)N, 3 * fb);
    h.emit(m);
  }
  // Unary ops whose per-element cost is a transcendental function (ops/fastmath.h).
  // Beside each, the same loop over libm's float function (std::erf, std::exp, std::tanh,
  // std::log1p: one call per element) on the same threads: the incumbent of a plain C++ loop.
  struct UnaryCase {
    const char* op;
    Tensor (*fn)(const Tensor&);
    float (*libm)(float);
    double (*ref)(double);
  };
  for (UnaryCase u : {UnaryCase{"gelu", [](const Tensor& x) { return gelu(x); },
                                [](float x) { return 0.5f * x * (1 + std::erf(x * 0.70710678f)); },
                                [](double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }},
                      UnaryCase{"exp", [](const Tensor& x) { return exp(x); }, [](float x) { return std::exp(x); },
                                [](double x) { return std::exp(x); }},
                      UnaryCase{"sigmoid", [](const Tensor& x) { return sigmoid(x); }, [](float x) { return 1 / (1 + std::exp(-x)); },
                                [](double x) { return 1 / (1 + std::exp(-x)); }},
                      UnaryCase{"tanh", [](const Tensor& x) { return tanh(x); }, [](float x) { return std::tanh(x); },
                                [](double x) { return std::tanh(x); }},
                      UnaryCase{"softplus", [](const Tensor& x) { return softplus(x); },
                                [](float x) { return x > 20 ? x : std::log1p(std::exp(x)); },
                                [](double x) { return std::log1p(std::exp(x)); }}}) {
    const std::string name = std::string(u.op) + " " + std::to_string(N) + " f32";
    if (!h.selected(name)) continue;
    auto ver = [&] { return sampled([&](int64_t i) { return u.ref(ap[i]); }, u.op); };
    Measurement m = h.measure(name, "lotgrad", [&] { out = u.fn(a); }, ver, 0, 2 * fb);
    h.emit(m);
    out = make_tensor({N}, kFloat32);
    float* op = out.data_ptr<float>();
    auto libm = [&] { parallel_for(0, N, 1 << 16, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) op[i] = u.libm(ap[i]); }); };
    Measurement ml = h.measure(name, "libm loop", libm, ver, 0, 2 * fb);
    h.emit(ml);
  }
  // Row ops over (rows, L) views of the same data.
  struct RowCase {
    const char* op;
    int64_t L;
  };
  for (RowCase rc : {RowCase{"softmax", 2048}, RowCase{"log_softmax", 2048}, RowCase{"softmax", 64}, RowCase{"layer_norm", 64},
                     RowCase{"layer_norm", 512}}) {
    const int64_t rows = N / rc.L;
    const std::string name = std::string(rc.op) + " (" + std::to_string(rows) + ", " + std::to_string(rc.L) + ") f32";
    if (!h.selected(name)) continue;
    const Tensor x = a.view({rows, rc.L});
    const std::string op = rc.op;
    auto fn = [&] {
      out = op == "softmax" ? softmax(x, -1) : op == "log_softmax" ? log_softmax(x, -1) : layer_norm(x, {rc.L});
    };
    auto ver = [&]() -> std::string {
      const float* o = out.data_ptr<float>();
      for (int64_t r = 0; r < rows; r += std::max<int64_t>(1, rows / 37)) {
        const float* xr = ap + r * rc.L;
        double mx = -INFINITY, s = 0, mean = 0, var = 0;
        for (int64_t j = 0; j < rc.L; ++j) mx = std::max(mx, (double)xr[j]);
        for (int64_t j = 0; j < rc.L; ++j) s += std::exp(xr[j] - mx);
        for (int64_t j = 0; j < rc.L; ++j) mean += xr[j] / (double)rc.L;
        for (int64_t j = 0; j < rc.L; ++j) var += (xr[j] - mean) * (xr[j] - mean) / (double)rc.L;
        for (int64_t j = 0; j < rc.L; ++j) {
          const double want = op == "softmax" ? std::exp(xr[j] - mx) / s
                              : op == "log_softmax" ? xr[j] - mx - std::log(s)
                                                    : (xr[j] - mean) / std::sqrt(var + 1e-5);
          if (std::abs(o[r * rc.L + j] - want) > 1e-4 * (1 + std::abs(want)))
            return op + " row " + std::to_string(r) + ": " + std::to_string(o[r * rc.L + j]) + " vs " + std::to_string(want);
        }
      }
      return "";
    };
    Measurement m = h.measure(name, "lotgrad", fn, ver, 0, 2 * fb);
    h.emit(m);
  }
}

void run_matmul(Harness& h) {
  const bool q = h.options().quick;
  const int64_t rows = q ? 4096 : 65536, bh = q ? 4 : 64, n = q ? 256 : 2048;
  const std::string R = std::to_string(rows), BH = std::to_string(bh), Ns = std::to_string(n);
  std::vector<MMCase> cases = {
      {"proj (" + R + ", 64) x (64, 192)", 0, rows, 64, 192},
      {"proj (" + R + ", 64) x (64, 128)", 0, rows, 64, 128},
      {"proj (" + R + ", 64) x (192, 64)^T", 0, rows, 64, 192, false, true},
      {"linear (" + R + ", 64), W (192, 64), bias", 0, rows, 64, 192, false, true, true, true},
      {"batched (" + BH + ", " + Ns + ", 32) x (" + BH + ", 32, 4)", bh, n, 32, 4},
      {"batched (" + BH + ", " + Ns + ", 32) x (" + BH + ", 32, 32)", bh, n, 32, 32},
      {"batched (" + BH + ", " + Ns + ", 4)^T x (" + BH + ", " + Ns + ", 32)", bh, 4, n, 32, true, false},
      {"batched (" + BH + ", " + Ns + ", 32) x (32, 4) shared", bh, n, 32, 4, false, false, false},
  };
  for (const auto& c : cases)
    if (h.selected(c.name)) run_matmul_case(h, c);
}

struct CoreBench {
  const char* name;   // the Harness's bench name
  const char* about;  // the help's description
  void (*run)(Harness&);
};
const CoreBench kMatmul = {"matmul",
                           "lotgrad matmul and linear at transformer shapes against cblas_sgemm on the same buffers (and\n"
                           "into a freshly allocated tensor), with the ratio lotgrad / BLAS.",
                           run_matmul};
const CoreBench kOps = {"ops",
                        "Elementwise add, gelu, exp, sigmoid, tanh and softplus, softmax, log_softmax and layer_norm\n"
                        "throughput in GB/s (inputs read "
                        "once, output written once), next to memcpy as the machine's copy bandwidth.",
                        run_ops};

// A core benchmark with the harness's options; prog names the command in its help and errors.
int core_bench(int argc, char** argv, const std::string& prog, const CoreBench& b) {
  CLI::App app(std::string(b.about) + "\nEach result is verified before it is timed. --json: one JSON object per measurement.",
               prog);
  Options opt;
  add_harness_options(app, opt);
  return run_bench(app, argc, argv, [&] {
    Harness h(b.name, opt);
    b.run(h);
    if (!h.all_ok()) std::fprintf(stderr, "%s: some results failed verification (not timed)\n", prog.c_str());
    return h.all_ok() ? 0 : 1;
  });
}

}  // namespace

int bench_matmul_main(int argc, char** argv) { return core_bench(argc, argv, "lotgrad bench matmul", kMatmul); }

int bench_ops_main(int argc, char** argv) { return core_bench(argc, argv, "lotgrad bench ops", kOps); }

int bench_core_main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "";
  if (which == "matmul") return core_bench(argc - 2, argv + 2, "bench_core matmul", kMatmul);
  if (which == "ops") return core_bench(argc - 2, argv + 2, "bench_core ops", kOps);
  const bool help = which == "--help" || which == "-h";
  std::fputs("usage: bench_core matmul|ops [options]   (bench_core matmul --help: the options)\n", help ? stdout : stderr);
  return help ? 0 : 2;
}
