// Drawing helpers shared by `lotgrad plot`, `lotgrad maps` and `lotgrad report`: an RGB canvas
// with lines, boxes and text in a hand-made 5x7 bitmap font, the viridis colour map, "nice"
// axis ticks (1, 2, 5 × 10^k), and the two downsamplings that keep large inputs usable
// (min/max-preserving curve buckets, block-averaged maps). PNGs are written with stb.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lotgrad::cli {

// The 5x7 glyph of c: 7 rows, top first, bit 4 = the leftmost column. Lowercase and uppercase
// letters, digits and common punctuation; any other character draws as '?'.
const std::array<uint8_t, 7>& glyph(char c);
bool has_glyph(char c);

struct Canvas {
  int w, h;
  std::vector<uint8_t> px;  // RGB, row-major
  Canvas(int w_, int h_);
  void set(int x, int y, uint32_t rgb);
  uint32_t get(int x, int y) const;
  void fill(int x, int y, int w, int h, uint32_t rgb);
  void line(double x0, double y0, double x1, double y1, uint32_t rgb, int thick = 1);
  // Text in the 5x7 font, `scale` pixels per font pixel, top-left at (x, y); 6 font pixels per
  // character. Returns the width drawn.
  int text(int x, int y, const std::string& s, uint32_t rgb, int scale = 1);
  static int text_width(const std::string& s, int scale = 1) { return (int)s.size() * 6 * scale; }
  // The same text turned a quarter anticlockwise (reading bottom to top), its baseline at x.
  void text_up(int x, int y_bottom, const std::string& s, uint32_t rgb, int scale = 1);
  // PNG bytes (stb), or a file; throws std::runtime_error naming the path when it cannot write.
  std::string png() const;
  void save(const std::string& path) const;
};

// Viridis (t in [0, 1], clamped; NaN -> 0), 0xRRGGBB.
uint32_t viridis(double t);

// Axis ticks: a step of 1, 2 or 5 × 10^k giving at most about `target` intervals, and the
// range widened to whole steps. lo == hi is widened around the value.
struct Ticks {
  double lo = 0, hi = 1, step = 1;
  std::vector<double> values;
};
Ticks nice_ticks(double lo, double hi, int target = 5);
// A tick label: no trailing zeros, scientific outside [1e-3, 1e5).
std::string tick_label(double v, double step);

// A curve cut down to at most max_points points: the points are split into max_points / 2
// equal runs of consecutive points, and each run keeps its smallest and largest y (in step
// order), so spikes survive. Returns the input when it is short enough.
std::vector<std::pair<double, double>> downsample_minmax(const std::vector<std::pair<double, double>>& pts,
                                                         size_t max_points);

// An n×n row-major map block-averaged to at most max_side × max_side: blocks of f × f entries
// with f = ceil(n / max_side) (the last block of a row or column may be smaller), each replaced
// by its mean. factor = 1 when n <= max_side (the map itself).
struct Downsampled {
  int64_t side = 0, factor = 1;
  std::vector<double> values;
};
Downsampled block_average(const std::vector<double>& a, int64_t n, int64_t max_side);

// Colour of a weight on a map's scale: linear a/vmax, or log10(a) over [log10(vmin), log10(vmax)]
// (values below vmin take the bottom colour).
struct MapScale {
  bool log = false;
  double vmin = 0, vmax = 1;
  double unit(double a) const;  // position on the scale, in [0, 1]
};
// The scale of a map: linear [0, max]; log [max(min positive, max * 1e-4), max].
MapScale map_scale(const std::vector<double>& a, bool log);

// A heatmap with a title, axis labels and ticks, and a colour bar with its labels, drawn at
// (x0, y0) with `cell` pixels per entry; the figure's size comes from heatmap_size.
struct HeatmapStyle {
  std::string title, xlabel = "key j", ylabel = "query i";
  int cell = 3;
  int64_t index_step = 1;  // each entry stands for this many positions (a block-averaged map)
};
std::pair<int, int> heatmap_size(int64_t side, const HeatmapStyle& st);
void draw_heatmap(Canvas& c, int x0, int y0, const std::vector<double>& a, int64_t side, const MapScale& sc,
                  const HeatmapStyle& st);

}  // namespace lotgrad::cli
