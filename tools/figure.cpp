#include "figure.h"

#include <stb/stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <stdexcept>

namespace lotgrad::cli {

namespace {
using G = std::array<uint8_t, 7>;
// Drawn for this project, row by row (5 columns, bit 4 on the left).
const std::map<char, G>& font() {
  static const std::map<char, G> f = {
      {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
      {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
      {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
      {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
      {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
      {'A', {0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11}}, {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
      {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}}, {'D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}},
      {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}}, {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
      {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}}, {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
      {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
      {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}}, {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
      {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}}, {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
      {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
      {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}}, {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
      {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}}, {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
      {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
      {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}}, {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
      {'Y', {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}}, {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
      {'a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}}, {'b', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E}},
      {'c', {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E}}, {'d', {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F}},
      {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}}, {'f', {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08}},
      {'g', {0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E}}, {'h', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}},
      {'i', {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E}}, {'j', {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C}},
      {'k', {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}}, {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
      {'m', {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11}}, {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}},
      {'o', {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E}}, {'p', {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10}},
      {'q', {0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01}}, {'r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}},
      {'s', {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E}}, {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}},
      {'u', {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D}}, {'v', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04}},
      {'w', {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A}}, {'x', {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11}},
      {'y', {0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E}}, {'z', {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F}},
      {' ', {0, 0, 0, 0, 0, 0, 0}},                      {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}},
      {',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}}, {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
      {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}}, {'/', {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}},
      {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}}, {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
      {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}}, {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}},
      {'_', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F}}, {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
      {'<', {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}}, {'>', {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}},
      {'[', {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E}}, {']', {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E}},
      {'^', {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00}}, {'*', {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00}},
      {'|', {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}}, {'\'', {0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00}},
      {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}}, {'#', {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A}},
  };
  return f;
}
}  // namespace

bool has_glyph(char c) { return font().count(c) > 0; }
const std::array<uint8_t, 7>& glyph(char c) {
  auto it = font().find(c);
  return it == font().end() ? font().at('?') : it->second;
}

Canvas::Canvas(int w_, int h_) : w(w_), h(h_), px((size_t)std::max(w_, 1) * std::max(h_, 1) * 3, 255) {
  if (w_ <= 0 || h_ <= 0 || (int64_t)w_ * h_ > (int64_t(1) << 26))
    throw std::invalid_argument("figure: canvas " + std::to_string(w_) + " x " + std::to_string(h_) + " is empty or too large");
}
void Canvas::set(int x, int y, uint32_t rgb) {
  if (x < 0 || y < 0 || x >= w || y >= h) return;
  uint8_t* p = &px[((size_t)y * w + x) * 3];
  p[0] = rgb >> 16, p[1] = (rgb >> 8) & 255, p[2] = rgb & 255;
}
uint32_t Canvas::get(int x, int y) const {
  const uint8_t* p = &px[((size_t)y * w + x) * 3];
  return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
}
void Canvas::fill(int x, int y, int fw, int fh, uint32_t rgb) {
  for (int j = std::max(y, 0); j < std::min(y + fh, h); ++j)
    for (int i = std::max(x, 0); i < std::min(x + fw, w); ++i) set(i, j, rgb);
}
void Canvas::line(double x0, double y0, double x1, double y1, uint32_t rgb, int thick) {
  const int n = (int)std::max(std::abs(x1 - x0), std::abs(y1 - y0)) + 1;
  for (int i = 0; i <= n; ++i) {
    const double t = (double)i / n;
    const int x = (int)std::lround(x0 + t * (x1 - x0)), y = (int)std::lround(y0 + t * (y1 - y0));
    fill(x, y, thick, thick, rgb);
  }
}
int Canvas::text(int x, int y, const std::string& s, uint32_t rgb, int scale) {
  for (size_t k = 0; k < s.size(); ++k) {
    const auto& g = glyph(s[k]);
    for (int r = 0; r < 7; ++r)
      for (int q = 0; q < 5; ++q)
        if (g[r] >> (4 - q) & 1) fill(x + ((int)k * 6 + q) * scale, y + r * scale, scale, scale, rgb);
  }
  return text_width(s, scale);
}
void Canvas::text_up(int x, int y_bottom, const std::string& s, uint32_t rgb, int scale) {
  for (size_t k = 0; k < s.size(); ++k) {
    const auto& g = glyph(s[k]);
    for (int r = 0; r < 7; ++r)
      for (int q = 0; q < 5; ++q)  // (q, r) -> (r, -q): the glyph's top faces left
        if (g[r] >> (4 - q) & 1) fill(x + r * scale, y_bottom - ((int)k * 6 + q + 1) * scale, scale, scale, rgb);
  }
}
std::string Canvas::png() const {
  std::string out;
  auto append = [](void* ctx, void* data, int size) { static_cast<std::string*>(ctx)->append((const char*)data, (size_t)size); };
  stbi_write_png_compression_level = 9;
  if (!stbi_write_png_to_func(append, &out, w, h, 3, px.data(), w * 3))
    throw std::runtime_error("figure: PNG encoding of a " + std::to_string(w) + " x " + std::to_string(h) + " image failed");
  return out;
}
void Canvas::save(const std::string& path) const {
  const std::string bytes = png();
  FILE* f = std::fopen(path.c_str(), "wb");
  const bool ok = f && std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (f && std::fclose(f) != 0) throw std::runtime_error("cannot write PNG " + path);
  if (!ok) throw std::runtime_error("cannot write PNG " + path);
}

// Viridis key colours (0, 1/4, 1/2, 3/4, 1), linearly interpolated: perceptually ordered and
// readable in grey and by most colour-blind readers.
uint32_t viridis(double t) {
  static const double key[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4.0;
  const int i = std::min(3, (int)t);
  const double f = t - i;
  uint32_t c = 0;
  for (int ch = 0; ch < 3; ++ch) c = c << 8 | (uint32_t)std::lround(key[i][ch] + f * (key[i + 1][ch] - key[i][ch]));
  return c;
}

Ticks nice_ticks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (lo > hi) std::swap(lo, hi);
  if (hi - lo < 1e-12 * std::max(1.0, std::abs(hi))) {  // one value: a range around it
    const double pad = lo == 0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= pad, hi += pad;
  }
  const double raw = (hi - lo) / std::max(target, 1), mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / mag, step = (r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10) * mag;
  Ticks t;
  t.step = step;
  t.lo = std::floor(lo / step + 1e-9) * step;
  t.hi = std::ceil(hi / step - 1e-9) * step;
  for (double v = t.lo; v <= t.hi + step * 1e-6; v += step) t.values.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

std::string tick_label(double v, double step) {
  char b[32];
  const double a = std::abs(v);
  if (v != 0 && (a >= 1e5 || a < 1e-3)) {
    std::snprintf(b, sizeof b, "%.3g", v);
  } else {
    const int dec = std::clamp((int)std::ceil(-std::log10(step) - 1e-9), 0, 6);
    std::snprintf(b, sizeof b, "%.*f", dec, v);
  }
  return b;
}

std::vector<std::pair<double, double>> downsample_minmax(const std::vector<std::pair<double, double>>& pts,
                                                         size_t max_points) {
  if (pts.size() <= max_points || max_points < 2) return pts;
  const size_t buckets = max_points / 2;
  std::vector<std::pair<double, double>> out;
  out.reserve(buckets * 2);
  for (size_t b = 0; b < buckets; ++b) {
    const size_t s = b * pts.size() / buckets, e = (b + 1) * pts.size() / buckets;
    size_t lo = s, hi = s;
    for (size_t i = s; i < e; ++i) {
      if (pts[i].second < pts[lo].second) lo = i;
      if (pts[i].second > pts[hi].second) hi = i;
    }
    out.push_back(pts[std::min(lo, hi)]);
    if (lo != hi) out.push_back(pts[std::max(lo, hi)]);
  }
  return out;
}

Downsampled block_average(const std::vector<double>& a, int64_t n, int64_t max_side) {
  Downsampled d;
  d.factor = std::max<int64_t>(1, (n + max_side - 1) / max_side);
  d.side = (n + d.factor - 1) / d.factor;
  d.values.assign((size_t)(d.side * d.side), 0.0);
  for (int64_t I = 0; I < d.side; ++I)
    for (int64_t J = 0; J < d.side; ++J) {
      double s = 0;
      const int64_t i1 = std::min(n, (I + 1) * d.factor), j1 = std::min(n, (J + 1) * d.factor);
      for (int64_t i = I * d.factor; i < i1; ++i)
        for (int64_t j = J * d.factor; j < j1; ++j) s += a[(size_t)(i * n + j)];
      d.values[(size_t)(I * d.side + J)] = s / (double)((i1 - I * d.factor) * (j1 - J * d.factor));
    }
  return d;
}

double MapScale::unit(double a) const {
  if (!std::isfinite(a)) return 0;
  if (!log) return vmax > 0 ? std::clamp(a / vmax, 0.0, 1.0) : 0.0;
  if (a <= vmin) return 0;
  return vmax > vmin ? std::clamp(std::log10(a / vmin) / std::log10(vmax / vmin), 0.0, 1.0) : 1.0;
}

MapScale map_scale(const std::vector<double>& a, bool log) {
  MapScale s;
  s.log = log;
  double mx = 0, mn_pos = INFINITY;
  for (double v : a)
    if (std::isfinite(v)) {
      mx = std::max(mx, v);
      if (v > 0) mn_pos = std::min(mn_pos, v);
    }
  s.vmax = mx > 0 ? mx : 1.0;
  s.vmin = log ? std::max(std::isfinite(mn_pos) ? mn_pos : s.vmax * 1e-4, s.vmax * 1e-4) : 0.0;
  if (log && s.vmin >= s.vmax) s.vmin = s.vmax * 1e-4;
  return s;
}

namespace {
constexpr int kLeft = 44, kTop = 16, kBottom = 30, kBar = 12, kBarGap = 10, kBarText = 52;
}

std::pair<int, int> heatmap_size(int64_t side, const HeatmapStyle& st) {
  const int s = (int)side * st.cell;
  return {kLeft + s + kBarGap + kBar + kBarText, kTop + s + kBottom};
}

void draw_heatmap(Canvas& c, int x0, int y0, const std::vector<double>& a, int64_t side, const MapScale& sc,
                  const HeatmapStyle& st) {
  const int s = (int)side * st.cell, mx = x0 + kLeft, my = y0 + kTop;
  c.text(x0 + 2, y0 + 2, st.title, 0x000000);
  for (int64_t i = 0; i < side; ++i)
    for (int64_t j = 0; j < side; ++j) c.fill(mx + (int)j * st.cell, my + (int)i * st.cell, st.cell, st.cell, viridis(sc.unit(a[(size_t)(i * side + j)])));
  const int64_t n = side * st.index_step;  // positions covered (the last block may be partial)
  const Ticks t = nice_ticks(0, (double)n, 4);
  for (double v : t.values) {
    if (v > (double)n) break;
    const int p = (int)std::lround(v / (double)n * s);
    const std::string lab = tick_label(v, t.step);
    c.line(mx + p, my + s, mx + p, my + s + 3, 0x000000);                       // x tick
    c.text(mx + p - Canvas::text_width(lab) / 2, my + s + 5, lab, 0x000000);
    c.line(mx - 4, my + p, mx - 1, my + p, 0x000000);                           // y tick
    c.text(mx - 5 - Canvas::text_width(lab), my + p - 3, lab, 0x000000);
  }
  c.text(mx + s / 2 - Canvas::text_width(st.xlabel) / 2, my + s + 15, st.xlabel, 0x404040);
  c.text_up(x0 + 2, my + s / 2 + Canvas::text_width(st.ylabel) / 2, st.ylabel, 0x404040);
  const int bx = mx + s + kBarGap;  // the colour bar, bottom = 0 (or vmin on a log scale)
  for (int y = 0; y < s; ++y) c.fill(bx, my + y, kBar, 1, viridis(1.0 - (double)y / std::max(1, s - 1)));
  char top[32], bottom[32];
  std::snprintf(top, sizeof top, "%.3g", sc.vmax);
  std::snprintf(bottom, sizeof bottom, sc.log ? "%.1e" : "%.3g", sc.vmin);
  c.text(bx + kBar + 3, my, top, 0x000000);
  c.text(bx + kBar + 3, my + s - 7, bottom, 0x000000);
  c.text(bx + kBar + 3, my + s / 2 - 3, sc.log ? "log" : "lin", 0x404040);
}

}  // namespace lotgrad::cli
