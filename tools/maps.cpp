// `lotgrad maps`: PNG pictures of the attention maps of several mechanisms on one input, with
// the statistics students compare (max weight against the weight bound a mechanism declares,
// LOTFormer's capacity 1/(n min b); row and column sums, entropy, rank); `lotgrad maps --example` prints a small LOTFormer worked
// example (Γ1, Γ2, b, A and their sums) for docs/lotformer.md.
#include <stb/stb_image_write.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention_lotformer.h>

#include "checks.h"
#include "commands.h"
#include "options.h"

namespace lotgrad::cli {

namespace {

// Viridis key colours (0, 1/4, 1/2, 3/4, 1), linearly interpolated: perceptually ordered
// and readable in grey and by most colour-blind readers.
std::array<uint8_t, 3> colour(double t) {
  static const double key[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4.0;
  const int i = std::min(3, (int)t);
  const double f = t - i;
  std::array<uint8_t, 3> c;
  for (int ch = 0; ch < 3; ++ch) c[ch] = (uint8_t)std::lround(key[i][ch] + f * (key[i + 1][ch] - key[i][ch]));
  return c;
}

// An RGB canvas, white background.
struct Canvas {
  int w, h;
  std::vector<uint8_t> px;
  Canvas(int w_, int h_) : w(w_), h(h_), px((size_t)w_ * h_ * 3, 255) {}
  // Paints the n×n map a (row-major) at (x0, y0), `cell` pixels per entry, colour a/vmax.
  void paint(const std::vector<double>& a, int64_t n, double vmax, int x0, int y0, int cell) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        auto c = colour(vmax > 0 ? a[i * n + j] / vmax : 0.0);
        for (int dy = 0; dy < cell; ++dy)
          for (int dx = 0; dx < cell; ++dx) {
            uint8_t* p = &px[(((size_t)(y0 + i * cell + dy)) * w + (x0 + j * cell + dx)) * 3];
            p[0] = c[0], p[1] = c[1], p[2] = c[2];
          }
      }
  }
  void save(const std::string& path) const {
    stbi_write_png_compression_level = 9;
    if (!stbi_write_png(path.c_str(), w, h, 3, px.data(), w * 3)) throw std::runtime_error("cannot write PNG " + path);
  }
};

struct Map {
  std::string label;         // e.g. "lotformer-r4"
  nn::AttentionOptions opt;  // mechanism and knobs
};

// maps' own settings of the mechanisms it draws (maps-specific defaults).
struct MapSettings {
  double lot_eps = 0.1, lot_init_std = -1.0;
  int64_t lot_half_steps = 50, sink_half_steps = 21;
};

// "lotformer-r4" -> lotformer with r = 4; other names are registry names. The knobs are
// resolved here, so a bad name or r is refused (naming --mechanisms) before any work.
Map parse_map(const std::string& s, const MapSettings& st) {
  Map m;
  m.label = s;
  m.opt.name = s;
  try {
    if (s.rfind("lotformer-r", 0) == 0) {
      const std::string r = s.substr(11);
      if (r.empty() || r.find_first_not_of("0123456789") != std::string::npos || r.size() > 6)
        throw std::invalid_argument("expected lotformer-rR with R a whole number of pivots");
      m.opt.name = "lotformer";
      m.opt.knobs["r"] = (double)std::stoll(r);
      m.opt.knobs["eps"] = st.lot_eps;
      m.opt.knobs["half_steps"] = (double)st.lot_half_steps;
      m.opt.knobs["init_std"] = st.lot_init_std;
    } else if (s == "sinkformer") {
      m.opt.knobs["half_steps"] = (double)st.sink_half_steps;
    }
    m.opt = nn::resolved(m.opt);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("--mechanisms " + s + ": " + e.what());
  }
  return m;
}

// A maps setting of a mechanism's knob: the knob's declared range, maps' own default.
template <class T>
CLI::Option* add_knob_setting(CLI::App& app, const std::string& option, T& v, const std::string& mechanism,
                      const std::string& knob, const std::string& help) {
  const nn::Knob* k = nn::mechanism_spec(mechanism).knob(knob);
  return add_number(app, option, v, k->lo, k->hi, help + " (" + mechanism + " " + k->option() + ")")
      ->group("Mechanism settings");
}

void print_matrix(const char* name, const Tensor& m) {
  std::printf("%s (%lld x %lld):\n", name, (long long)m.size(0), (long long)m.size(1));
  for (int64_t i = 0; i < m.size(0); ++i) {
    std::printf("  ");
    for (int64_t j = 0; j < m.size(1); ++j) std::printf(" %.4f", m.at({i, j}));
    std::printf("\n");
  }
}
void print_sums(const char* name, const Tensor& m) {
  std::printf("%s row sums:   ", name);
  for (double x : sum(m, {1}).to_vector()) std::printf(" %.6f", x);
  std::printf("\n%s column sums:", name);
  for (double x : sum(m, {0}).to_vector()) std::printf(" %.6f", x);
  std::printf("\n");
}

// The worked example for docs/lotformer.md: one head, n = 6 tokens, r = 2 pivots, d = 2, f64.
int worked_example(double eps, int64_t seed) {
  const int64_t n = 6, r = 2, d = 2;
  Generator g((uint64_t)seed);
  Tensor q = randn({1, 1, n, d}, g, kFloat64), k = randn({1, 1, n, d}, g, kFloat64), v = randn({1, 1, n, d}, g, kFloat64);
  std::printf("LOTFormer worked example: n = %lld tokens, r = %lld pivots, d = %lld, eps = %g, seed %lld (f64)\n",
              (long long)n, (long long)r, (long long)d, eps, (long long)seed);
  print_matrix("Q", q.select(0, 0).select(0, 0));
  print_matrix("K", k.select(0, 0).select(0, 0));
  for (int64_t T : {200, 3, 4}) {
    nn::AttentionOptions o;
    o.name = "lotformer";
    o.n_heads = 1;
    o.d_head = d;
    o.knobs = {{"r", (double)r}, {"eps", eps}, {"half_steps", (double)T}, {"init_std", 1.0}, {"grad", 0}};
    Generator gz(7);
    nn::LOTFormerAttention att(o, gz);
    att.to_(kFloat64);
    {
      NoGradGuard ng;  // non-uniform masses, so b visibly matters
      att.mass_logits.detach().copy_(Tensor::from_vector(std::vector<double>{0.4, -0.4}, {1, 2}));
    }
    NoGradGuard ng;
    Tensor G1, G2, b;
    att.plans(q, k, Tensor(), G1, G2, b);
    Tensor A = att.attention_matrix(q, k, Tensor()).select(0, 0).select(0, 0);
    std::printf("\n=== %lld half-steps%s ===\n", (long long)T, T == 200 ? " (converged)" : "");
    if (T == 200) {
      print_matrix("Z (pivots)", att.pivots.select(0, 0));
      std::printf("b = softmax(w) = [%.6f, %.6f]\n", b.at({0, 0, 0}), b.at({0, 0, 1}));
      print_matrix("Gamma1 (queries -> pivots)", G1.select(0, 0).select(0, 0));
      print_sums("Gamma1", G1.select(0, 0).select(0, 0));
      print_matrix("Gamma2 (pivots -> keys)", G2.select(0, 0).select(0, 0));
      print_sums("Gamma2", G2.select(0, 0).select(0, 0));
      print_matrix("A = n Gamma1 diag(1/b) Gamma2", A);
      double bound = 1.0 / (n * std::min(b.at({0, 0, 0}), b.at({0, 0, 1})));
      std::printf("max A = %.6f <= capacity bound 1/(n min b) = %.6f\n", max(A).item(), bound);
      Tensor y = att.forward(q, k, v, Tensor()).select(0, 0).select(0, 0);
      Tensor vm = mean(v.select(0, 0).select(0, 0), {0}), ym = mean(y, {0});
      std::printf("mean pooling: mean of outputs = [%.6f, %.6f], mean of values = [%.6f, %.6f]\n", ym.at({0}),
                  ym.at({1}), vm.at({0}), vm.at({1}));
    }
    print_sums("A", A);
  }
  return 0;
}

}  // namespace

int cmd_maps(int argc, char** argv) {
  CLI::App app(
      "One MultiHeadAttention layer per mechanism, all with the same query/key/value projection weights, on one\n"
      "(1, n, d_model) input; writes <out-dir>/maps_<mechanism>_h<head>.png (each map scaled to its own maximum,\n"
      "printed below) and <out-dir>/maps_grid.png (rows: heads; top block per-map maximum, bottom block one shared\n"
      "scale, the largest weight of all maps), colour map viridis (dark = 0, yellow = the scale's maximum), and\n"
      "prints per-map statistics, the max weight next to the bound the mechanism declares (LOTFormer: 1/(n min b)).\n"
      "--mechanisms: registry names (lotgrad info), and lotformer-rR for LOTFormer with R pivots.\n"
      "--input blocks: --blocks token types in contiguous runs, each token its type's random vector plus --noise\n"
      "Gaussian noise; random: N(0, 1) tokens.\n"
      "--example prints the LOTFormer worked example of docs/lotformer.md (n = 6, r = 2): Gamma1, Gamma2, b, A and\n"
      "their sums (it reads --seed and --lot-eps only). No --json.",
      "lotgrad maps");
  bool example = false;
  std::string out_dir = "maps", input = "blocks";
  std::vector<std::string> names = {"softmax", "sinkformer", "lotformer-r2", "lotformer-r4", "lotformer-r16", "espformer"};
  int64_t n = 64, D = 64, H = 2, blocks = 4, seed = 0, cell = 3, threads = 0;
  double noise = 0.5, wstd = 0;
  MapSettings settings;
  app.add_flag("--example", example, "print the LOTFormer worked example instead of drawing maps");
  app.add_option("--out-dir", out_dir, "where the PNGs go")->capture_default_str();
  app.add_option("--mechanisms", names, "comma-separated maps to draw")->delimiter(',')->capture_default_str();
  add_number(app, "--n", n, 2, 4096, "tokens");
  add_setting(app, "d-model", D);
  add_setting(app, "heads", H);
  add_choice(app, "--input", input, {"blocks", "random"}, "the input tokens");
  add_number(app, "--blocks", blocks, 1, 1e6, "--input blocks: token types");
  add_number(app, "--noise", noise, 0, 1e6, "--input blocks: std of the noise on each token");
  CLI::Option* wstd_opt = add_number(app, "--weight-std", wstd, 0, 1e6, "std of the shared projection weights")
                              ->default_str("1.5/sqrt(d-model)");
  add_number(app, "--seed", seed, 0, kMaxSeed, "seed of the input, the weights and the mechanisms");
  add_number(app, "--cell", cell, 1, 64, "pixels per map entry");
  CLI::Option* eps_opt =
      add_knob_setting(app, "--lot-eps", settings.lot_eps, "lotformer", "eps", "lotformer-rR: eps (--example: default 0.5)");
  add_knob_setting(app, "--lot-half-steps", settings.lot_half_steps, "lotformer", "half_steps", "lotformer-rR: half-steps");
  add_knob_setting(app, "--lot-init-std", settings.lot_init_std, "lotformer", "init_std",
                   "lotformer-rR: pivots start N(0, std^2); -1: N(0, 1/d)");
  add_knob_setting(app, "--sink-half-steps", settings.sink_half_steps, "sinkformer", "half_steps", "sinkformer: half-steps");
  add_threads_applied(app, threads);
  std::vector<Map> maps;
  after_parse(app, [&] {
    if (example) return;
    check_heads(D, H);
    for (const auto& s : names)
      if (!s.empty()) maps.push_back(parse_map(s, settings));
    if (maps.empty()) throw std::invalid_argument("--mechanisms is empty");
  });
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (example) return worked_example(eps_opt->count() ? settings.lot_eps : 0.5, seed);

  std::filesystem::create_directories(out_dir);
  // The input (1, n, D).
  Generator gx((uint64_t)seed + 101);
  Tensor x;
  if (input == "random") {
    x = randn({1, n, D}, gx);
  } else {
    Tensor types = randn({blocks, D}, gx);
    std::vector<int64_t> id((size_t)n);
    for (int64_t t = 0; t < n; ++t) id[t] = t * blocks / n;
    x = add(index_select(types, 0, Tensor::from_vector(id, {n})), mul(randn({n, D}, gx), noise)).unsqueeze(0);
  }
  // Shared projection weights: N(0, weight_std²), so that the scores q·k/√d have a spread of
  // order one (the library's 0.02 init would make every map nearly uniform).
  if (!wstd_opt->count()) wstd = 1.5 / std::sqrt((double)D);
  Generator gw((uint64_t)seed + 202);
  Tensor Wqkv = mul(randn({3 * D, D}, gw), wstd);

  std::printf("lotgrad maps: n = %lld, d_model = %lld, %lld heads, input %s, seed %llu, weight std %.4f\n", (long long)n,
              (long long)D, (long long)H, input.c_str(), (unsigned long long)seed, wstd);
  std::printf("uniform weight 1/n = %.4f; ln n = %.3f (entropy of a uniform row)\n", 1.0 / n, std::log((double)n));
  std::printf("%-16s %4s %9s %9s %21s %21s %8s %5s\n", "mechanism", "head", "max", "bound", "row sums", "column sums",
              "entropy", "rank");
  std::vector<std::vector<std::vector<double>>> all;  // [map][head] -> n×n
  std::vector<std::vector<double>> vmax;
  double global = 0;
  for (auto& m : maps) {
    m.opt.n_heads = H;
    Generator g((uint64_t)seed);
    nn::MultiHeadAttention mha(D, m.opt, g);
    if (mha.qkv) {  // block-input mechanisms own their projections
      NoGradGuard ng;
      mha.qkv->weight.copy_(Wqkv);
    }
    Tensor A = nn::probe_attention(mha, x);  // (1, H, n, n)
    nn::AttentionStats st = nn::attention_stats(A);
    // The bound on any weight the mechanism declares, per head (LOTFormer: 1/(n min b)); empty when none.
    const std::vector<double> bound = mha.mechanism->weight_bound(n);
    all.emplace_back();
    vmax.emplace_back();
    for (int64_t h = 0; h < H; ++h) {
      Tensor Ah = A.select(0, 0).select(0, h);
      std::vector<double> a_h = Ah.to_vector();
      const double mx = *std::max_element(a_h.begin(), a_h.end());
      Tensor rs = st.row_sum.select(0, 0).select(0, h), cs = st.col_sum.select(0, 0).select(0, h);
      char bnd[32];
      if (bound.empty()) std::snprintf(bnd, sizeof bnd, "-");
      else std::snprintf(bnd, sizeof bnd, "%.4f", bound[(size_t)h]);
      std::printf("%-16s %4lld %9.4f %9s   [%7.4f, %7.4f]   [%7.4f, %7.4f] %8.3f %5lld\n", m.label.c_str(), (long long)h, mx,
                  bnd, min(rs).item(), max(rs).item(), min(cs).item(), max(cs).item(),
                  mean(st.row_entropy.select(0, 0).select(0, h)).item(), (long long)st.rank.at({0, h}));
      Canvas c((int)n * cell, (int)n * cell);
      c.paint(a_h, n, mx, 0, 0, cell);
      const std::string path = out_dir + "/maps_" + m.label + "_h" + std::to_string(h) + ".png";
      c.save(path);
      all.back().push_back(std::move(a_h));
      vmax.back().push_back(mx);
      global = std::max(global, mx);
    }
  }
  // The grid: columns = mechanisms, rows = heads; top block per-map scale, bottom shared.
  const int side = (int)(n * cell), gap = (int)std::max<int64_t>(2, cell * 2), M = (int)maps.size();
  Canvas grid(M * side + (M - 1) * gap, (int)(2 * H) * side + (int)(2 * H - 1) * gap + 2 * gap);
  for (int mi = 0; mi < M; ++mi)
    for (int64_t h = 0; h < H; ++h) {
      const int x0 = mi * (side + gap);
      grid.paint(all[mi][h], n, vmax[mi][h], x0, (int)h * (side + gap), cell);
      grid.paint(all[mi][h], n, global, x0, (int)(H + h) * (side + gap) + 2 * gap, cell);
    }
  grid.save(out_dir + "/maps_grid.png");
  std::printf("wrote %d maps to %s/maps_<mechanism>_h<head>.png (each scaled to its own max) and %s/maps_grid.png "
              "(columns:", M * (int)H, out_dir.c_str(), out_dir.c_str());
  for (auto& m : maps) std::printf(" %s", m.label.c_str());
  std::printf("; top %lld rows per-map max, bottom %lld rows shared max %.4f)\n", (long long)H, (long long)H, global);
  return 0;
}

}  // namespace lotgrad::cli
