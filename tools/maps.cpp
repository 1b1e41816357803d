// `lotgrad maps`: PNG pictures of the attention maps of several mechanisms on one input, with
// the statistics students compare (max weight against the weight bound a mechanism declares,
// LOTFormer's capacity 1/(n min b); row and column sums, entropy, rank); `lotgrad maps --example` prints a small LOTFormer worked
// example (Γ1, Γ2, b, A and their sums) for docs/lotformer.md.
#include "maps.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention_lotformer.h>

#include "checks.h"
#include "commands.h"
#include "figure.h"
#include "options.h"

namespace lotgrad::cli {

namespace {

struct Map {
  std::string label;         // e.g. "lotformer-r4"
  nn::AttentionOptions opt;  // mechanism and knobs
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

void check_map_name(const std::string& name, const MapSettings& st) { parse_map(name, st); }

std::string maps_input_summary(const MapsInput& in) {
  char b[256];
  std::snprintf(b, sizeof b, "n = %lld, d_model = %lld, %lld heads, input %s%s, seed %lld, weight std %.4f", (long long)in.n,
                (long long)in.d_model, (long long)in.heads, in.input.c_str(),
                in.input == "blocks" ? (" (" + std::to_string(in.blocks) + " token types)").c_str() : "", (long long)in.seed,
                in.weight_std > 0 ? in.weight_std : 1.5 / std::sqrt((double)in.d_model));
  return b;
}

namespace {
// The input (1, n, D): blocks of token types plus noise, or N(0, 1) tokens.
Tensor maps_x(const MapsInput& in) {
  Generator gx((uint64_t)in.seed + 101);
  if (in.input == "random") return randn({1, in.n, in.d_model}, gx);
  Tensor types = randn({in.blocks, in.d_model}, gx);
  std::vector<int64_t> id((size_t)in.n);
  for (int64_t t = 0; t < in.n; ++t) id[(size_t)t] = t * in.blocks / in.n;
  return add(index_select(types, 0, Tensor::from_vector(id, {in.n})), mul(randn({in.n, in.d_model}, gx), in.noise)).unsqueeze(0);
}

// The statistics of one mechanism's (1, H, n, n) maps.
void fill_stats(MechanismMaps& mm, const Tensor& A, int64_t H) {
  const nn::AttentionStats st = nn::attention_stats(A);
  for (int64_t h = 0; h < H; ++h) {
    std::vector<double> a = A.select(0, 0).select(0, h).contiguous().to_vector();
    const Tensor rs = st.row_sum.select(0, 0).select(0, h), cs = st.col_sum.select(0, 0).select(0, h);
    mm.max.push_back(*std::max_element(a.begin(), a.end()));
    mm.row_sum_lo.push_back(min(rs).item()), mm.row_sum_hi.push_back(max(rs).item());
    mm.col_sum_lo.push_back(min(cs).item()), mm.col_sum_hi.push_back(max(cs).item());
    mm.entropy.push_back(mean(st.row_entropy.select(0, 0).select(0, h)).item());
    mm.rank.push_back((int64_t)st.rank.at({0, h}));
    mm.maps.push_back(std::move(a));
  }
}
}  // namespace

std::vector<MechanismMaps> mechanism_maps(const std::vector<std::string>& names, const MapsInput& in) {
  check_heads(in.d_model, in.heads);
  const Tensor x = maps_x(in);
  // Shared projection weights: N(0, weight_std²), so that the scores q·k/√d have a spread of
  // order one (the library's 0.02 init would make every map nearly uniform).
  const double wstd = in.weight_std > 0 ? in.weight_std : 1.5 / std::sqrt((double)in.d_model);
  Generator gw((uint64_t)in.seed + 202);
  const Tensor Wqkv = mul(randn({3 * in.d_model, in.d_model}, gw), wstd);
  std::vector<MechanismMaps> out;
  for (const auto& name : names) {
    Map m = parse_map(name, in.settings);
    m.opt.n_heads = in.heads;
    Generator g((uint64_t)in.seed);
    nn::MultiHeadAttention mha(in.d_model, m.opt, g);
    if (mha.qkv) {  // block-input mechanisms own their projections
      NoGradGuard ng;
      mha.qkv->weight.copy_(Wqkv);
    }
    MechanismMaps mm;
    mm.label = m.label;
    fill_stats(mm, nn::probe_attention(mha, x), in.heads);  // (1, H, n, n)
    mm.bound = mha.mechanism->weight_bound(in.n);  // per head (LOTFormer: 1/(n min b)); empty when none
    out.push_back(std::move(mm));
  }
  return out;
}

namespace {
void print_row(const MechanismMaps& m, int64_t h) {
  char bnd[32] = "-";
  if (!m.bound.empty()) std::snprintf(bnd, sizeof bnd, "%.4f", m.bound[(size_t)h]);
  const size_t k = (size_t)h;
  std::printf("%-16s %4lld %9.4f %9s   [%7.4f, %7.4f]   [%7.4f, %7.4f] %8.3f %5lld\n", m.label.c_str(), (long long)h,
              m.max[k], bnd, m.row_sum_lo[k], m.row_sum_hi[k], m.col_sum_lo[k], m.col_sum_hi[k], m.entropy[k],
              (long long)m.rank[k]);
}

// One map as a figure: title, axes (query i down, key j across), colour bar.
void draw_map(Canvas& c, int x0, int y0, const MechanismMaps& m, int64_t h, int64_t n, bool log, double vmax, int cell) {
  MapScale sc = map_scale(m.maps[(size_t)h], log);
  if (vmax > 0) sc.vmax = vmax, sc.vmin = log ? std::min(sc.vmin, vmax * 1e-4) : 0.0;
  HeatmapStyle st;
  st.title = m.label + " head " + std::to_string(h);
  st.cell = cell;
  draw_heatmap(c, x0, y0, m.maps[(size_t)h], n, sc, st);
}

// The grid: columns = mechanisms, rows = heads; the top block each map on its own scale, the
// bottom block all on one shared scale (the largest weight of all maps).
void save_grid(const std::vector<MechanismMaps>& all, int64_t n, int64_t H, bool log, int cell, const std::string& path) {
  HeatmapStyle st;
  st.cell = cell;
  const auto [fw, fh] = heatmap_size(n, st);
  const int M = (int)all.size(), band = 22;
  double global = 0;
  for (const auto& m : all)
    for (double v : m.max) global = std::max(global, v);
  Canvas grid(M * fw, (int)(2 * H) * fh + 2 * band);
  grid.text(4, 6, "each map on its own scale (colour bar: 0 to the map's max)", 0x000000);
  grid.text(4, (int)H * fh + band + 6, "one shared scale for all maps (max " + tick_label(global, global / 100) + ")", 0x000000);
  for (int mi = 0; mi < M; ++mi)
    for (int64_t h = 0; h < H; ++h) {
      draw_map(grid, mi * fw, band + (int)h * fh, all[(size_t)mi], h, n, log, 0, cell);
      draw_map(grid, mi * fw, 2 * band + (int)(H + h) * fh, all[(size_t)mi], h, n, log, global, cell);
    }
  grid.save(path);
}
}  // namespace

int cmd_maps(int argc, char** argv) {
  CLI::App app(
      "One MultiHeadAttention layer per mechanism, all with the same query/key/value projection weights, on one\n"
      "(1, n, d_model) input; writes <out-dir>/maps_<mechanism>_h<head>.png (each map scaled to its own maximum)\n"
      "and <out-dir>/maps_grid.png (columns: mechanisms, rows: heads; top block per-map maximum, bottom block one\n"
      "shared scale, the largest weight of all maps). Every map has a title, axes (query i down, key j across) and a\n"
      "colour bar; colour map viridis (dark = 0, yellow = the scale's maximum), --scale log: log10 of the weight\n"
      "over [max(smallest positive, max * 1e-4), max]. Prints per-map statistics, the max weight next to the bound\n"
      "the mechanism declares (LOTFormer: 1/(n min b)).\n"
      "--mechanisms: registry names (lotgrad info), and lotformer-rR for LOTFormer with R pivots.\n"
      "--input blocks: --blocks token types in contiguous runs, each token its type's random vector plus --noise\n"
      "Gaussian noise; random: N(0, 1) tokens.\n"
      "--example prints the LOTFormer worked example of docs/lotformer.md (n = 6, r = 2): Gamma1, Gamma2, b, A and\n"
      "their sums (it reads --seed and --lot-eps only). No --json.",
      "lotgrad maps");
  bool example = false;
  std::string out_dir = "maps", scale = "linear";
  std::vector<std::string> names = {"softmax", "sinkformer", "lotformer-r2", "lotformer-r4", "lotformer-r16", "espformer"};
  MapsInput in;
  int64_t cell = 3, threads = 0;
  app.add_flag("--example", example, "print the LOTFormer worked example instead of drawing maps");
  app.add_option("--out-dir", out_dir, "where the PNGs go")->capture_default_str();
  app.add_option("--mechanisms", names, "comma-separated maps to draw")->delimiter(',')->capture_default_str();
  add_number(app, "--n", in.n, 2, 4096, "tokens");
  add_setting(app, "d-model", in.d_model);
  add_setting(app, "heads", in.heads);
  add_choice(app, "--input", in.input, {"blocks", "random"}, "the input tokens");
  add_number(app, "--blocks", in.blocks, 1, 1e6, "--input blocks: token types");
  add_number(app, "--noise", in.noise, 0, 1e6, "--input blocks: std of the noise on each token");
  add_number(app, "--weight-std", in.weight_std, 0, 1e6, "std of the shared projection weights (0: 1.5/sqrt(d-model))");
  add_number(app, "--seed", in.seed, 0, kMaxSeed, "seed of the input, the weights and the mechanisms");
  add_number(app, "--cell", cell, 1, 64, "pixels per map entry");
  add_choice(app, "--scale", scale, {"linear", "log"}, "colour scale of the maps");
  MapSettings& settings = in.settings;
  CLI::Option* eps_opt =
      add_knob_setting(app, "--lot-eps", settings.lot_eps, "lotformer", "eps", "lotformer-rR: eps (--example: default 0.5)");
  add_knob_setting(app, "--lot-half-steps", settings.lot_half_steps, "lotformer", "half_steps", "lotformer-rR: half-steps");
  add_knob_setting(app, "--lot-init-std", settings.lot_init_std, "lotformer", "init_std",
                   "lotformer-rR: pivots start N(0, std^2); -1: N(0, 1/d)");
  add_knob_setting(app, "--sink-half-steps", settings.sink_half_steps, "sinkformer", "half_steps", "sinkformer: half-steps");
  add_threads_applied(app, threads);
  after_parse(app, [&] {
    if (example) return;
    check_heads(in.d_model, in.heads);
    names.erase(std::remove(names.begin(), names.end(), std::string()), names.end());
    for (const auto& s : names) check_map_name(s, settings);
    if (names.empty()) throw std::invalid_argument("--mechanisms is empty");
  });
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (example) return worked_example(eps_opt->count() ? settings.lot_eps : 0.5, in.seed);

  std::filesystem::create_directories(out_dir);
  std::printf("lotgrad maps: %s\n", maps_input_summary(in).c_str());
  std::printf("uniform weight 1/n = %.4f; ln n = %.3f (entropy of a uniform row)\n", 1.0 / in.n, std::log((double)in.n));
  std::printf("%-16s %4s %9s %9s %21s %21s %8s %5s\n", "mechanism", "head", "max", "bound", "row sums", "column sums",
              "entropy", "rank");
  const std::vector<MechanismMaps> all = mechanism_maps(names, in);
  const bool log = scale == "log";
  HeatmapStyle st;
  st.cell = (int)cell;
  const auto [fw, fh] = heatmap_size(in.n, st);
  for (const auto& m : all)
    for (int64_t h = 0; h < in.heads; ++h) {
      print_row(m, h);
      Canvas c(fw, fh);
      draw_map(c, 0, 0, m, h, in.n, log, 0, (int)cell);
      c.save(out_dir + "/maps_" + m.label + "_h" + std::to_string(h) + ".png");
    }
  save_grid(all, in.n, in.heads, log, (int)cell, out_dir + "/maps_grid.png");
  std::printf("wrote %d maps to %s/maps_<mechanism>_h<head>.png (each scaled to its own max) and %s/maps_grid.png "
              "(columns:", (int)all.size() * (int)in.heads, out_dir.c_str(), out_dir.c_str());
  for (const auto& m : all) std::printf(" %s", m.label.c_str());
  std::printf("; top %lld rows per-map max, bottom %lld rows one shared max; colour scale %s)\n", (long long)in.heads,
              (long long)in.heads, scale.c_str());
  return 0;
}

}  // namespace lotgrad::cli
