// `lotgrad plot`: one or several training runs' metrics.jsonl as a PNG: the training loss,
// the task's metric on train (dashed) and dev (solid), and with --lr the learning rate, each
// panel with every run overlaid, a legend and axes fitted to the data. Hand-rasterised with
// the 5x7 font of figure.h and written with stb: no plotting dependency.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <lotgrad/lotgrad.h>
#include <lotgrad/models/metrics_log.h>
#include <sstream>

#include "commands.h"
#include "figure.h"
#include "html.h"
#include "options.h"

namespace lotgrad::cli {

namespace {
constexpr int kPanelW = 560, kPanelH = 320, kMl = 64, kMr = 16, kMt = 26, kMb = 40;

// One panel: axes with nice ticks fitted to the finite points (not forced through 0), the
// curves, the title. The legend is drawn once for the figure (draw_legend).
void draw_panel(Canvas& c, int x0, int y0, const Chart& ch) {
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  for (const auto& s : ch.series)
    for (const auto& [x, y] : s.points)
      if (std::isfinite(x) && std::isfinite(y)) xlo = std::min(xlo, x), xhi = std::max(xhi, x), ylo = std::min(ylo, y), yhi = std::max(yhi, y);
  if (!std::isfinite(xlo)) xlo = 0, xhi = 1, ylo = 0, yhi = 1;
  const Ticks tx = nice_ticks(xlo, xhi, 5), ty = nice_ticks(ylo, yhi, 5);
  const int L = x0 + kMl, T = y0 + kMt, W = kPanelW - kMl - kMr, H = kPanelH - kMt - kMb;
  auto X = [&](double v) { return L + (v - tx.lo) / (tx.hi - tx.lo) * W; };
  auto Y = [&](double v) { return T + H - (v - ty.lo) / (ty.hi - ty.lo) * H; };
  for (double v : tx.values) {
    for (int y = T; y < T + H; y += 3) c.set((int)X(v), y, 0xdddddd);
    const std::string l = tick_label(v, tx.step);
    c.text((int)X(v) - Canvas::text_width(l) / 2, T + H + 5, l, 0x000000);
  }
  for (double v : ty.values) {
    for (int x = L; x < L + W; x += 3) c.set(x, (int)Y(v), 0xdddddd);
    const std::string l = tick_label(v, ty.step);
    c.text(L - 5 - Canvas::text_width(l), (int)Y(v) - 3, l, 0x000000);
  }
  c.line(L, T + H, L + W, T + H, 0x000000);
  c.line(L, T, L, T + H, 0x000000);
  c.text(L + W / 2 - Canvas::text_width(ch.xlabel) / 2, T + H + 18, ch.xlabel, 0x404040);
  c.text(L, y0 + 8, ch.title, 0x000000, 1);
  for (const auto& s : ch.series) {
    std::vector<std::pair<double, double>> pts;
    for (const auto& p : s.points)
      if (std::isfinite(p.first) && std::isfinite(p.second)) pts.push_back(p);
    pts = downsample_minmax(pts, (size_t)W * 2);
    double along = 0;  // pixels drawn so far: dashes of 6 on, 4 off along the curve
    for (size_t i = 1; i < pts.size(); ++i) {
      const double ax = X(pts[i - 1].first), ay = Y(pts[i - 1].second), bx = X(pts[i].first), by = Y(pts[i].second);
      if (!s.dashed) {
        c.line(ax, ay, bx, by, s.colour, 2);
        continue;
      }
      const double len = std::hypot(bx - ax, by - ay);
      for (double t = 0; t < len; t += 1, along += 1)
        if (std::fmod(along, 10.0) < 6) c.fill((int)std::lround(ax + (bx - ax) * t / len), (int)std::lround(ay + (by - ay) * t / len), 2, 2, s.colour);
    }
    if (pts.size() == 1) c.fill((int)X(pts[0].first) - 2, (int)Y(pts[0].second) - 2, 5, 5, s.colour);
  }
}

// The legend: a swatch and the run's name per run, then what solid and dashed mean.
int draw_legend(Canvas& c, int x0, int y0, const std::vector<std::string>& runs, bool dashed_note) {
  int x = x0;
  for (size_t k = 0; k < runs.size(); ++k) {
    const std::string name = runs[k].substr(0, 32);
    if (x + 30 + Canvas::text_width(name) > c.w - 10) x = x0, y0 += 14;
    c.fill(x, y0 + 2, 20, 3, series_colour(k));
    x += 24 + c.text(x + 24, y0, name, 0x000000) + 16;
  }
  if (dashed_note) c.text(x0, y0 + 16, "metric panel: dashed = train, solid = dev", 0x404040);
  return y0 + 32;
}

struct RunCurves {
  std::string name, metric;
  std::vector<std::pair<double, double>> loss, train, dev, lr;
};

RunCurves read_curves(const std::string& arg) {
  namespace fs = std::filesystem;
  const std::string path = fs::is_directory(arg) ? arg + "/metrics.jsonl" : arg;
  const std::vector<models::MetricsRecord> records = models::read_metrics(path, /*tolerate_torn_tail=*/true);
  RunCurves r;
  const fs::path p = fs::path(path).lexically_normal();
  r.name = fs::is_directory(arg) ? fs::path(arg).lexically_normal().filename().string() : p.parent_path().filename().string();
  if (r.name.empty()) r.name = p.stem().string();
  r.metric = "acc";  // the task's metric: the records name it "train_<metric>", "dev_<metric>"
  for (const auto& rec : records)
    for (const auto& [k, v] : rec.values)
      if (k.rfind("dev_", 0) == 0) r.metric = k.substr(4);
  for (const auto& rec : records) {
    const double step = (double)rec.step;
    if (rec.has("loss")) r.loss.push_back({step, rec.values.at("loss")});
    if (rec.has("train_" + r.metric)) r.train.push_back({step, rec.values.at("train_" + r.metric)});
    if (rec.has("dev_" + r.metric)) r.dev.push_back({step, rec.values.at("dev_" + r.metric)});
    if (rec.has("lr")) r.lr.push_back({step, rec.values.at("lr")});
  }
  if (r.loss.empty() && r.dev.empty()) throw IOError(path + " holds no metrics");
  return r;
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
  Chart ch;
  ch.xlabel = names.empty() ? "x" : names[0];
  for (size_t k = 1; k < names.size(); ++k) ch.series.push_back({names[k], series_colour(k - 1), {}, false});
  while (std::getline(in, line)) {
    std::istringstream row(line);
    double x, y;
    if (!(row >> x)) continue;
    for (auto& s : ch.series)
      if (row >> y) s.points.push_back({x, y});
  }
  if (ch.series.empty() || ch.series[0].points.empty()) throw std::invalid_argument("plot: the table has no numeric rows to plot");
  std::vector<std::string> legend;
  for (const auto& s : ch.series) legend.push_back(s.name);
  Canvas c(kPanelW + 20, kPanelH + 60);
  draw_panel(c, 10, 0, ch);
  draw_legend(c, 20, kPanelH + 8, legend, false);
  c.save(path);
  std::printf("wrote %s:", path.c_str());
  for (size_t k = 1; k < names.size(); ++k) std::printf(" %s%s", names[k].c_str(), k + 1 < names.size() ? "," : "");
  std::printf(" against %s\n", names[0].c_str());
}

int cmd_plot(int argc, char** argv) {
  CLI::App app("Training curves of one or several runs, overlaid, as a PNG: the training loss, the task's metric on\n"
               "train (dashed) and dev (solid) (accuracy, bits per character or squared error), and with --lr the\n"
               "learning rate, against the step; one colour per run, named in the legend; axes fitted to the data. Each\n"
               "argument is a run directory or its metrics.jsonl. A torn last line (a run still writing) is skipped.\n"
               "No --json.",
               "lotgrad plot");
  std::vector<std::string> inputs;
  std::string out = "curves.png";
  bool lr = false;
  app.add_option("runs", inputs, "run directories or metrics.jsonl files")->required()->check(CLI::ExistingPath);
  app.add_option("--out", out, "the PNG to write")->capture_default_str();
  app.add_flag("--lr", lr, "add a panel with the learning rate");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  std::vector<RunCurves> runs;
  for (const auto& in : inputs) runs.push_back(read_curves(in));
  std::string metrics = runs[0].metric;  // one panel: the runs' metrics named together when they differ
  for (const auto& r : runs)
    if (("/" + metrics + "/").find("/" + r.metric + "/") == std::string::npos) metrics += "/" + r.metric;
  Chart loss{"training loss", "step", "loss", {}}, metric{metrics + ": train (dashed) and dev (solid)", "step", "", {}},
      rate{"learning rate", "step", "lr", {}};
  std::vector<std::string> names;
  size_t evals = 0;
  for (size_t k = 0; k < runs.size(); ++k) {
    const RunCurves& r = runs[k];
    names.push_back(r.name);
    loss.series.push_back({r.name, series_colour(k), r.loss, false});
    metric.series.push_back({r.name + " train", series_colour(k), r.train, true});
    metric.series.push_back({r.name + " dev", series_colour(k), r.dev, false});
    rate.series.push_back({r.name, series_colour(k), r.lr, false});
    evals += r.dev.size();
  }
  const int panels = lr ? 3 : 2;
  Canvas c(panels * kPanelW + 20, kPanelH + 40 + 14 * (1 + (int)runs.size() / 4));
  draw_panel(c, 10, 0, loss);
  draw_panel(c, 10 + kPanelW, 0, metric);
  if (lr) draw_panel(c, 10 + 2 * kPanelW, 0, rate);
  draw_legend(c, 10 + kMl, kPanelH + 4, names, true);
  c.save(out);
  std::printf("wrote %s (%zu runs, %zu dev evaluations%s)\n", out.c_str(), runs.size(), evals, lr ? ", with the learning rate" : "");
  return 0;
}

}  // namespace lotgrad::cli
