// `lotgrad plot`: turns a training run's metrics.jsonl into a PNG with two panels, the
// training loss and the train/dev accuracy against the step. Hand-rasterised (a 3×5 pixel
// font for the axis labels) and written with stb_image_write: no plotting dependency.
#include <stb/stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <lotgrad/lotgrad.h>
#include <lotgrad/models/metrics_log.h>
#include <map>
#include <sstream>

#include "commands.h"
#include "options.h"

namespace lotgrad::cli {

namespace {
struct Canvas {
  int w, h;
  std::vector<uint8_t> px;  // RGB
  Canvas(int w_, int h_) : w(w_), h(h_), px((size_t)w_ * h_ * 3, 255) {}
  void set(int x, int y, uint32_t rgb) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    uint8_t* p = &px[((size_t)y * w + x) * 3];
    p[0] = rgb >> 16;
    p[1] = (rgb >> 8) & 255;
    p[2] = rgb & 255;
  }
  void line(double x0, double y0, double x1, double y1, uint32_t rgb, int thick = 1) {
    const int n = (int)std::max(std::abs(x1 - x0), std::abs(y1 - y0)) + 1;
    for (int i = 0; i <= n; ++i) {
      const double t = (double)i / n;
      const int x = (int)std::lround(x0 + t * (x1 - x0)), y = (int)std::lround(y0 + t * (y1 - y0));
      for (int dx = 0; dx < thick; ++dx)
        for (int dy = 0; dy < thick; ++dy) set(x + dx, y + dy, rgb);
    }
  }
  // 3×5 glyphs, scaled by s.
  void text(int x, int y, const std::string& s, uint32_t rgb, int scale = 2) {
    static const std::map<char, const char*> font = {
        {'0', "111101101101111"}, {'1', "010110010010111"}, {'2', "111001111100111"}, {'3', "111001111001111"},
        {'4', "101101111001001"}, {'5', "111100111001111"}, {'6', "111100111101111"}, {'7', "111001001001001"},
        {'8', "111101111101111"}, {'9', "111101111001111"}, {'.', "000000000000010"}, {'-', "000000111000000"},
        {'a', "000011101101011"}, {'c', "000111100100111"}, {'d', "001011101101011"}, {'e', "000111111100111"},
        {'l', "100100100100110"}, {'o', "000111101101111"}, {'p', "000111101111100"}, {'r', "000110101100100"},
        {'s', "000111110011111"}, {'t', "010111010010011"}, {'v', "000101101101010"}, {'i', "010000010010010"},
        {'n', "000110101101101"}, {'k', "100101110101101"}, {' ', "000000000000000"}, {'/', "001001010100100"},
        {'b', "100100111101111"}, {'m', "000111111101101"}, {'x', "000101010101000"}, {'f', "011010111010010"},
        {'h', "100100111101101"}, {'u', "000101101101111"}, {'y', "101101111001111"}, {'w', "000101101111111"},
        {'g', "111100101101111"}, {'(', "001010010010001"}, {')', "100010010010100"}, {'+', "000010111010000"},
        {'^', "010101000000000"}};
    for (size_t c = 0; c < s.size(); ++c) {
      auto it = font.find(s[c]);
      if (it == font.end()) continue;
      for (int r = 0; r < 5; ++r)
        for (int q = 0; q < 3; ++q)
          if (it->second[r * 3 + q] == '1')
            for (int a = 0; a < scale; ++a)
              for (int b = 0; b < scale; ++b) set(x + (int)c * 4 * scale + q * scale + a, y + r * scale + b, rgb);
    }
  }
};

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, std::abs(v) >= 100 ? "%.0f" : "%.3g", v);
  return b;
}

// Draws series (x, y) into the panel [x0, x0+pw) × [y0, y0+ph) with shared axes.
void panel(Canvas& c, int x0, int y0, int pw, int ph, const std::string& title,
           const std::vector<std::pair<std::vector<std::pair<double, double>>, uint32_t>>& series, double ylo, double yhi,
           const std::string& xlabel = "step") {
  double xmax = 1;
  for (auto& s : series)
    for (auto& p : s.first) xmax = std::max(xmax, p.first);
  if (yhi <= ylo) yhi = ylo + 1;
  c.line(x0, y0 + ph, x0 + pw, y0 + ph, 0x000000);
  c.line(x0, y0, x0, y0 + ph, 0x000000);
  for (int g = 1; g <= 4; ++g) {  // light grid
    const int y = y0 + ph - g * ph / 4;
    for (int x = x0 + 1; x < x0 + pw; x += 4) c.set(x, y, 0xcccccc);
    c.text(x0 - 52, y - 5, num(ylo + (yhi - ylo) * g / 4), 0x000000);
  }
  c.text(x0 - 52, y0 + ph - 5, num(ylo), 0x000000);
  c.text(x0 + pw - 40, y0 + ph + 8, num(xmax), 0x000000);
  c.text(x0, y0 + ph + 8, "0", 0x000000);
  c.text(x0 + pw / 2 - 16, y0 + ph + 8, xlabel, 0x000000);
  c.text(x0 + 8, y0 - 16, title, 0x000000);
  for (auto& [pts, rgb] : series)
    for (size_t i = 1; i < pts.size(); ++i) {
      auto X = [&](double v) { return x0 + v / xmax * pw; };
      auto Y = [&](double v) { return y0 + ph - (std::clamp(v, ylo, yhi) - ylo) / (yhi - ylo) * ph; };
      c.line(X(pts[i - 1].first), Y(pts[i - 1].second), X(pts[i].first), Y(pts[i].second), rgb, 2);
    }
}

// Splits a table's header at runs of two or more spaces (column names may hold one space).
std::vector<std::string> header_names(const std::string& line) {
  std::vector<std::string> names;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    size_t j = i;
    while (j < line.size() && !(line[j] == ' ' && j + 1 < line.size() && line[j + 1] == ' ')) ++j;
    if (j > i) names.push_back(line.substr(i, j - i));
    i = j;
  }
  return names;
}
}  // namespace

void plot_table(const std::string& table, const std::string& path) {
  std::istringstream in(table);
  std::string line;
  std::getline(in, line);
  const std::vector<std::string> names = header_names(line);
  std::vector<std::vector<std::pair<double, double>>> cols(names.size() > 1 ? names.size() - 1 : 0);
  double ylo = 0, yhi = 0;
  while (std::getline(in, line)) {
    std::istringstream row(line);
    double x, y;
    if (!(row >> x)) continue;
    for (auto& col : cols)
      if (row >> y) {
        col.push_back({x, y});
        ylo = std::min(ylo, y);
        yhi = std::max(yhi, y);
      }
  }
  if (cols.empty() || cols[0].empty()) throw std::invalid_argument("plot: the table has no numeric rows to plot");
  static const uint32_t colours[] = {0x1f5fbf, 0xd03020, 0x20a040, 0x9040c0, 0xe08000, 0x404040};
  std::vector<std::pair<std::vector<std::pair<double, double>>, uint32_t>> series;
  for (size_t k = 0; k < cols.size(); ++k) series.push_back({cols[k], colours[k % 6]});
  Canvas c(700, 420);
  panel(c, 70, 40, 600, 300, "", series, ylo, yhi * 1.05, names[0]);
  for (size_t k = 0; k < cols.size(); ++k) {  // legend: a swatch per column; names in the caption below
    c.line(80 + 100 * (int)k, 385, 110 + 100 * (int)k, 385, colours[k % 6], 3);
    c.text(115 + 100 * (int)k, 380, std::to_string(k + 1), 0x000000);
  }
  if (!stbi_write_png(path.c_str(), c.w, c.h, 3, c.px.data(), c.w * 3)) throw IOError("cannot write " + path);
  std::printf("wrote %s:", path.c_str());
  for (size_t k = 0; k < cols.size(); ++k) std::printf(" %zu = %s%s", k + 1, names[k + 1].c_str(), k + 2 < names.size() ? "," : "");
  std::printf(" against %s\n", names[0].c_str());
}

int cmd_plot(int argc, char** argv) {
  CLI::App app("Training loss (left) and the task's metric on train (blue) and dev (red) (right: accuracy, bits per\n"
               "character or squared error) against the step, from a run's metrics.jsonl, as a PNG. A torn last line (a run\n"
               "still writing) is skipped. No --json.",
               "lotgrad plot");
  std::string in, out = "curves.png";
  app.add_option("metrics", in, "the run's metrics.jsonl")->required()->check(CLI::ExistingFile);
  app.add_option("--out", out, "the PNG to write")->capture_default_str();
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  const std::vector<models::MetricsRecord> records = models::read_metrics(in, /*tolerate_torn_tail=*/true);
  std::string metric = "acc";  // the task's metric: the records name it "train_<metric>", "dev_<metric>"
  for (const auto& r : records)
    for (const auto& [k, v] : r.values)
      if (k.rfind("dev_", 0) == 0) metric = k.substr(4);
  std::vector<std::pair<double, double>> loss, tm, dm;
  double lmax = 0, mmax = 0;
  for (const auto& r : records) {
    const double step = (double)r.step;
    if (r.has("loss")) loss.push_back({step, r.values.at("loss")});
    if (r.has("train_" + metric)) tm.push_back({step, r.values.at("train_" + metric)});
    if (r.has("dev_" + metric)) dm.push_back({step, r.values.at("dev_" + metric)});
  }
  if (loss.empty() && dm.empty()) throw IOError(in + " holds no metrics");
  for (auto& p : loss) lmax = std::max(lmax, p.second);
  for (const auto* s : {&tm, &dm})
    for (auto& p : *s) mmax = std::max(mmax, p.second);
  Canvas c(1000, 400);
  panel(c, 70, 40, 380, 300, "loss", {{loss, 0x1f5fbf}}, 0.0, lmax * 1.05);
  panel(c, 580, 40, 380, 300, metric + " train / dev", {{tm, 0x1f5fbf}, {dm, 0xd03020}}, 0.0, metric == "acc" ? 1.0 : mmax * 1.05);
  const auto& dacc = dm;
  if (!stbi_write_png(out.c_str(), c.w, c.h, 3, c.px.data(), c.w * 3)) throw IOError("cannot write " + out);
  std::printf("wrote %s (%zu loss points, %zu dev evaluations)\n", out.c_str(), loss.size(), dacc.size());
  return 0;
}

}  // namespace lotgrad::cli
