// `lotgrad maps`: PNG pictures of the attention maps of several mechanisms on one input, with
// the statistics students compare (max weight against LOTFormer's capacity bound, row and
// column sums, entropy, rank); `lotgrad maps --example` prints a small LOTFormer worked
// example (Γ1, Γ2, b, A and their sums) for docs/lotformer.md.
#include <stb/stb_image_write.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention_lotformer.h>
#include <sstream>

#include "cli.h"
#include "commands.h"

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

// "lotformer-r4" -> lotformer with r = 4; other names are registry names.
Map parse_map(const std::string& s, const Args& a) {
  Map m;
  m.label = s;
  m.opt.name = s;
  if (s.rfind("lotformer-r", 0) == 0) {
    m.opt.name = "lotformer";
    m.opt.knobs["r"] = (double)std::stoll(s.substr(11));
    m.opt.knobs["eps"] = a.get_double("lot-eps", 0.1);
    m.opt.knobs["half_steps"] = (double)a.get_int("lot-half-steps", 50);
    m.opt.knobs["init_std"] = a.get_double("lot-init-std", -1.0);
  } else if (s == "sinkformer") {
    m.opt.knobs["half_steps"] = (double)a.get_int("sink-half-steps", 21);
  }
  return m;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
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
int worked_example(const Args& a) {
  const int64_t n = 6, r = 2, d = 2;
  const double eps = a.get_double("lot-eps", 0.5);
  Generator g((uint64_t)a.get_int("seed", 0));
  Tensor q = randn({1, 1, n, d}, g, kFloat64), k = randn({1, 1, n, d}, g, kFloat64), v = randn({1, 1, n, d}, g, kFloat64);
  std::printf("LOTFormer worked example: n = %lld tokens, r = %lld pivots, d = %lld, eps = %g, seed %lld (f64)\n",
              (long long)n, (long long)r, (long long)d, eps, (long long)a.get_int("seed", 0));
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
  Args a(argc, argv, {"help", "example"});
  if (a.flag("help")) {
    std::puts(
        "lotgrad maps [--out-dir maps] [--mechanisms softmax,sinkformer,lotformer-r2,lotformer-r4,lotformer-r16,espformer]\n"
        "             [--n 64] [--d-model 64] [--heads 2] [--input blocks|random] [--blocks 4] [--noise 0.5]\n"
        "             [--weight-std 1.5/sqrt(d_model)] [--seed 0] [--cell 3] [--lot-eps 0.1] [--lot-half-steps 50]\n"
        "             [--lot-init-std -1] [--sink-half-steps 21]\n"
        "  One MultiHeadAttention layer per mechanism, all with the same query/key/value projection\n"
        "  weights, on one (1, n, d_model) input; writes <out-dir>/maps_<mechanism>_h<head>.png (each map\n"
        "  scaled to its own maximum, printed below) and <out-dir>/maps_grid.png (rows: heads; top block\n"
        "  per-map maximum, bottom block one shared scale, the largest weight of all maps), colour\n"
        "  map viridis (dark = 0, yellow = the scale's maximum), and prints per-map statistics.\n"
        "  lotformer-rR is LOTFormer with R pivots; --lot-init-std -1 means pivots N(0, 1/d).\n"
        "  --input blocks: --blocks token types in contiguous runs, each token its type's random\n"
        "  vector plus --noise Gaussian noise; random: N(0, 1) tokens.\n"
        "lotgrad maps --example [--seed 0] [--lot-eps 0.5]\n"
        "  Prints the LOTFormer worked example of docs/lotformer.md (n = 6, r = 2): Γ1, Γ2, b, A, sums.");
    return 0;
  }
  a.check_known({"help", "example", "out-dir", "mechanisms", "n", "d-model", "heads", "input", "blocks", "noise",
                 "weight-std", "seed", "cell", "lot-eps", "lot-half-steps", "lot-init-std", "sink-half-steps",
                 "threads"});
  if (a.has("threads")) set_num_threads((int)a.get_int("threads", 1));
  if (a.flag("example")) return worked_example(a);

  const int64_t n = a.get_int("n", 64), D = a.get_int("d-model", 64), H = a.get_int("heads", 2);
  const int cell = (int)a.get_int("cell", 3);
  const uint64_t seed = (uint64_t)a.get_int("seed", 0);
  if (n < 2 || D <= 0 || H <= 0 || D % H || cell <= 0)
    throw std::invalid_argument("maps: need n >= 2, d-model a positive multiple of heads, cell > 0");
  const std::string out_dir = a.get("out-dir", "maps");
  std::filesystem::create_directories(out_dir);

  // The input (1, n, D).
  Generator gx(seed + 101);
  Tensor x;
  const std::string input = a.get("input", "blocks");
  if (input == "random") {
    x = randn({1, n, D}, gx);
  } else if (input == "blocks") {
    const int64_t nb = std::max<int64_t>(1, a.get_int("blocks", 4));
    Tensor types = randn({nb, D}, gx);
    std::vector<int64_t> id((size_t)n);
    for (int64_t t = 0; t < n; ++t) id[t] = t * nb / n;
    x = add(index_select(types, 0, Tensor::from_vector(id, {n})), mul(randn({n, D}, gx), a.get_double("noise", 0.5)))
            .unsqueeze(0);
  } else {
    throw std::invalid_argument("maps: --input must be blocks or random, got \"" + input + "\"");
  }
  // Shared projection weights: N(0, weight_std²), so that the scores q·k/√d have a spread of
  // order one (the library's 0.02 init would make every map nearly uniform).
  const double wstd = a.get_double("weight-std", 1.5 / std::sqrt((double)D));
  Generator gw(seed + 202);
  Tensor Wqkv = mul(randn({3 * D, D}, gw), wstd);

  std::vector<Map> maps;
  for (auto& s : split_list(a.get("mechanisms", "softmax,sinkformer,lotformer-r2,lotformer-r4,lotformer-r16,espformer")))
    maps.push_back(parse_map(s, a));
  if (maps.empty()) throw std::invalid_argument("maps: --mechanisms is empty");

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
    Generator g(seed);
    nn::MultiHeadAttention mha(D, m.opt, g);
    {
      NoGradGuard ng;
      mha.qkv->weight.copy_(Wqkv);
    }
    Tensor A = nn::probe_attention(mha, x);  // (1, H, n, n)
    nn::AttentionStats st = nn::attention_stats(A);
    // LOTFormer's capacity bound 1/(n · min b) per head
    std::vector<double> bound((size_t)H, NAN);
    if (auto lot = std::dynamic_pointer_cast<nn::LOTFormerAttention>(mha.mechanism)) {
      NoGradGuard ng;
      Tensor q, k, v, G1, G2, b;
      mha.project(x, q, k, v);
      lot->plans(q, k, Tensor(), G1, G2, b);
      for (int64_t h = 0; h < H; ++h) bound[h] = 1.0 / ((double)n * min(b.select(0, 0).select(0, h)).item());
    }
    all.emplace_back();
    vmax.emplace_back();
    for (int64_t h = 0; h < H; ++h) {
      Tensor Ah = A.select(0, 0).select(0, h);
      std::vector<double> a_h = Ah.to_vector();
      const double mx = *std::max_element(a_h.begin(), a_h.end());
      Tensor rs = st.row_sum.select(0, 0).select(0, h), cs = st.col_sum.select(0, 0).select(0, h);
      char bnd[32];
      if (std::isnan(bound[h])) std::snprintf(bnd, sizeof bnd, "-");
      else std::snprintf(bnd, sizeof bnd, "%.4f", bound[h]);
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
  const int side = (int)n * cell, gap = std::max(2, cell * 2), M = (int)maps.size();
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
