// lotgrad report and the drawing helpers behind it, plot and maps (tools/figure.h, html.h,
// report.h; models/report.h).
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <lotgrad/lotgrad.h>
#include <lotgrad/models/report.h>
#include <regex>
#include <set>
#include <sstream>

#include "figure.h"
#include "html.h"
#include "report.h"

using namespace lotgrad;
namespace fs = std::filesystem;

namespace {
std::string tmpdir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("lotgrad_test_report_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t i = s.find(what); i != std::string::npos; i = s.find(what, i + 1)) ++n;
  return n;
}

// A tiny finished ListOps run (seconds).
std::string tiny_run(const std::string& dir, const std::string& attention) {
  models::TrainConfig c;
  c.min_len = 3, c.max_len = 12, c.gen_train = 64, c.gen_val = 16, c.gen_test = 16;
  c.attention = attention;
  c.d_model = 16, c.mlp = 16, c.heads = 2, c.depth = 2;
  c.steps = 4, c.batch = 8, c.eval_every = 2, c.quiet = true, c.overwrite = true;
  c.out_dir = dir;
  std::ostringstream log;
  models::train(c, log);
  return dir;
}

// A synthetic metrics.jsonl of `steps` training records and a dev record every 100 steps.
void synthetic_log(const std::string& dir, int64_t steps, double phase) {
  fs::create_directories(dir);
  std::ofstream f(dir + "/metrics.jsonl");
  for (int64_t s = 1; s <= steps; ++s) {
    f << "{\"loss\":" << 2.0 * std::exp(-s / 1500.0) + 0.05 * std::sin(s * 0.37 + phase) + (s == 2500 ? 3.0 : 0.0)
      << ",\"lr\":0.0005,\"step\":" << s << ",\"tokens_per_s\":1000,\"train_acc\":" << 0.5 + 0.4 * s / steps << "}\n";
    if (s % 100 == 0) f << "{\"best_dev\":0.5,\"dev_acc\":" << 0.3 + 0.5 * s / steps << ",\"step\":" << s << "}\n";
  }
}
}  // namespace

TEST_CASE("the 5x7 font has a distinct glyph for every digit and letter and draws inside its box") {
  std::set<std::array<uint8_t, 7>> seen;
  const std::string chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  for (char c : chars) {
    INFO(std::string(1, c));
    CHECK(cli::has_glyph(c));
    const auto& g = cli::glyph(c);
    CHECK(std::any_of(g.begin(), g.end(), [](uint8_t r) { return r != 0; }));
    for (uint8_t r : g) CHECK(r < 32);  // five columns
    seen.insert(g);
  }
  CHECK(seen.size() == chars.size());
  for (char c : std::string(".,-+/()=:_%<>[]^*|'?# ")) CHECK(cli::has_glyph(c));
  CHECK(cli::glyph('~') == cli::glyph('?'));
  cli::Canvas cv(100, 20);
  const int w = cv.text(2, 3, "Ab9", 0x000000, 2);
  CHECK(w == cli::Canvas::text_width("Ab9", 2));
  int dark = 0;
  for (int y = 0; y < cv.h; ++y)
    for (int x = 0; x < cv.w; ++x)
      if (cv.get(x, y) != 0xffffff) {
        ++dark;
        CHECK((x >= 2 && x < 2 + w && y >= 3 && y < 3 + 14));
      }
  CHECK(dark > 40);
}

TEST_CASE("nice_ticks: steps of 1 2 or 5 times a power of ten covering the data and not forced through 0") {
  for (auto [lo, hi] : std::vector<std::pair<double, double>>{{2.27, 2.32}, {0, 5000}, {-3.2, 17.9}, {1e-5, 5e-4}, {0.4, 0.4}}) {
    INFO(lo << " " << hi);
    const cli::Ticks t = cli::nice_ticks(lo, hi, 5);
    CHECK(t.lo <= lo);
    CHECK(t.hi >= hi);
    const double m = t.step / std::pow(10.0, std::floor(std::log10(t.step) + 1e-12));
    CHECK((std::abs(m - 1) < 1e-9 || std::abs(m - 2) < 1e-9 || std::abs(m - 5) < 1e-9));
    CHECK(t.values.size() >= 2);
    CHECK(t.values.size() <= 12);
    CHECK(t.values.front() == doctest::Approx(t.lo));
    CHECK(t.values.back() == doctest::Approx(t.hi));
  }
  CHECK(cli::nice_ticks(2.27, 2.32).lo > 2.0);  // auto-ranged: a loss near 2.3 is not drawn from 0
  CHECK(cli::tick_label(0.30000000000000004, 0.05) == "0.30");
  CHECK(cli::tick_label(5000, 1000) == "5000");
}

TEST_CASE("downsample_minmax keeps at most max_points and every bucket's extremes in order") {
  std::vector<std::pair<double, double>> pts;
  for (int i = 0; i < 5000; ++i) pts.push_back({(double)i, std::sin(i * 0.01) + (i == 2345 ? 10.0 : 0.0) - (i == 77 ? 10.0 : 0.0)});
  const auto d = cli::downsample_minmax(pts, 1000);
  CHECK(d.size() <= 1000);
  CHECK(d.size() >= 900);
  CHECK(std::is_sorted(d.begin(), d.end()));
  auto has = [&](int i) { return std::find(d.begin(), d.end(), pts[(size_t)i]) != d.end(); };
  CHECK(has(2345));  // the spike up
  CHECK(has(77));    // and down
  const std::vector<std::pair<double, double>> few(pts.begin(), pts.begin() + 10);
  CHECK(cli::downsample_minmax(few, 1000) == few);
}

TEST_CASE("block_average: blocks of ceil(n over max_side) entries and their mean") {
  const int64_t n = 300;
  std::vector<double> a((size_t)(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) a[(size_t)(i * n + j)] = (double)(i * 7 + j % 13);
  const cli::Downsampled d = cli::block_average(a, n, 128);
  CHECK(d.factor == 3);
  CHECK(d.side == 100);
  double m = 0;  // entry (1, 2): rows 3..5, columns 6..8
  for (int64_t i = 3; i < 6; ++i)
    for (int64_t j = 6; j < 9; ++j) m += a[(size_t)(i * n + j)] / 9.0;
  CHECK(d.values[1 * 100 + 2] == doctest::Approx(m));
  const cli::Downsampled e = cli::block_average(a, 129, 128);  // a partial last block
  CHECK(e.factor == 2);
  CHECK(e.side == 65);
  CHECK(e.values.back() == doctest::Approx(a[(size_t)(128 * 129 + 128)]));
  const cli::Downsampled same = cli::block_average(std::vector<double>(a.begin(), a.begin() + 64 * 64), 64, 128);
  CHECK(same.factor == 1);
  CHECK(same.values == std::vector<double>(a.begin(), a.begin() + 64 * 64));
}

TEST_CASE("map scales: linear from 0 and log over the positive range") {
  const std::vector<double> a = {0.0, 1e-6, 1e-3, 0.5};
  const cli::MapScale lin = cli::map_scale(a, false), lg = cli::map_scale(a, true);
  CHECK(lin.unit(0.5) == 1.0);
  CHECK(lin.unit(0.25) == doctest::Approx(0.5));
  CHECK(lg.vmin == doctest::Approx(0.5e-4));  // the smallest positive is below max * 1e-4
  CHECK(lg.unit(0.0) == 0.0);
  CHECK(lg.unit(0.5) == doctest::Approx(1.0));
  CHECK(lg.unit(0.5e-2) == doctest::Approx(0.5));
  CHECK(cli::viridis(0) == 0x440154);
  CHECK(cli::viridis(1) == 0xfde725);
  CHECK(cli::viridis(NAN) == 0x440154);
}

TEST_CASE("base64 and html_escape") {
  CHECK(cli::base64("") == "");
  CHECK(cli::base64("f") == "Zg==");
  CHECK(cli::base64("fo") == "Zm8=");
  CHECK(cli::base64("foo") == "Zm9v");
  CHECK(cli::base64("foobar") == "Zm9vYmFy");
  CHECK(cli::base64(std::string("\xff\x00\x10", 3)) == "/wAQ");
  CHECK(cli::html_escape("<a href=\"x\">&'") == "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
}

TEST_CASE("svg_line_chart: every series in the legend and its points within the plot") {
  cli::Chart c{"loss", "step", "loss", {}};
  std::vector<std::pair<double, double>> p1, p2;
  for (int i = 1; i <= 3000; ++i) p1.push_back({(double)i, 2.3 - i * 1e-4});
  p2 = {{1, 2.0}, {2, NAN}, {3, 2.1}};
  c.series.push_back({"run <one>", cli::series_colour(0), p1, false});
  c.series.push_back({"run two", cli::series_colour(1), p2, true});
  size_t drawn = 0;
  const std::string svg = cli::svg_line_chart(c, 500, &drawn);
  CHECK(drawn == 500 + 2);  // the NaN point dropped
  CHECK(svg.find("data-series=\"2\"") != std::string::npos);
  CHECK(svg.find("run &lt;one&gt;") != std::string::npos);
  CHECK(svg.find(">run two<") != std::string::npos);
  CHECK(count(svg, "<polyline") == 2);
  CHECK(svg.find("nan") == std::string::npos);
  // every coordinate inside the viewBox
  std::regex num(" points=\"([^\"]*)\"");
  for (std::sregex_iterator it(svg.begin(), svg.end(), num), end; it != end; ++it) {
    std::istringstream in((*it)[1].str());
    std::string xy;
    while (in >> xy) {
      const double x = std::stod(xy.substr(0, xy.find(','))), y = std::stod(xy.substr(xy.find(',') + 1));
      INFO(xy);
      CHECK((x >= 0 && x <= 660 && y >= 0 && y <= 300));
    }
  }
}

TEST_CASE("load_run reads the settings and the end record of a finished run and refuses an empty directory") {
  const std::string dir = tmpdir("load");
  tiny_run(dir + "/soft", "softmax");
  const models::RunData r = models::load_run(dir + "/soft");
  CHECK(r.name == "soft");
  CHECK(r.config_source == "config.json");
  CHECK(r.config.attention == "softmax");
  CHECK(r.metric == "acc");
  CHECK(r.last_step == 4);
  CHECK(std::isfinite(r.best_dev));
  CHECK((r.best_step == 2 || r.best_step == 4));
  CHECK(std::isfinite(r.test));  // the end record of a finished run
  CHECK(r.ms_per_step > 0);
  CHECK(r.tokens_per_s > 0);
  CHECK(r.best_checkpoint == dir + "/soft/best.ckpt");
  fs::remove(dir + "/soft/config.json");  // the checkpoint's stored settings instead
  CHECK(models::load_run(dir + "/soft").config_source == "best.ckpt");
  fs::create_directories(dir + "/empty");
  try {
    models::load_run(dir + "/empty");
    FAIL("an empty directory was read");
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()).find(dir + "/empty") != std::string::npos);
  }
  fs::remove_all(dir);
}

TEST_CASE("checkpoint_attention: one stochastic map per layer and head within the maxima inspect reports") {
  const std::string dir = tmpdir("attn");
  tiny_run(dir + "/soft", "softmax");
  const models::RunData r = models::load_run(dir + "/soft");
  std::ostringstream log;
  const auto ex = models::checkpoint_attention(r.config, r.best_checkpoint, "val", {0, 1}, 1e-6, 256, log);
  REQUIRE(ex.size() == 2);
  const auto ins = models::inspect_checkpoint(r.config, r.best_checkpoint, "val", 2, log);
  for (const auto& e : ex) {
    REQUIRE(e.maps.size() == (size_t)(2 * 2));
    for (size_t m = 0; m < e.maps.size(); ++m) {
      REQUIRE(e.maps[m].size() == (size_t)(e.n * e.n));
      for (int64_t i = 0; i < e.n; ++i) {
        double s = 0;
        for (int64_t j = 0; j < e.n; ++j) s += e.maps[m][(size_t)(i * e.n + j)];
        CHECK(s == doctest::Approx(1.0).epsilon(1e-5));  // softmax rows
      }
      CHECK(*std::max_element(e.maps[m].begin(), e.maps[m].end()) <= ins[m].max_weight + 1e-6);
      CHECK(e.rank[m] >= 1);
      CHECK(e.rank[m] <= e.n);
    }
  }
  // over rank_max_n: no rank
  CHECK(models::checkpoint_attention(r.config, r.best_checkpoint, "val", {5}, 1e-6, 1, log)[0].rank[0] == -1);
  CHECK(models::checkpoint_attention(r.config, r.best_checkpoint, "val", {5}, 1e-6, 1, log)[0].index == 5);
  // an example past the end: refused naming it, or skipped when asked
  CHECK_THROWS_WITH_AS(models::checkpoint_attention(r.config, r.best_checkpoint, "val", {16}, 1e-6, 1, log),
                       doctest::Contains("example 16 is outside the val split (16 examples)"), std::invalid_argument);
  CHECK(models::checkpoint_attention(r.config, r.best_checkpoint, "val", {3, 16}, 1e-6, 1, log, true).size() == 1);
  fs::remove_all(dir);
}

TEST_CASE("report_html: every section, one figure per curve and map, nothing fetched") {
  const std::string dir = tmpdir("page");
  tiny_run(dir + "/soft", "softmax");
  tiny_run(dir + "/lot", "lotformer");
  std::vector<models::RunData> runs = {models::load_run(dir + "/soft"), models::load_run(dir + "/lot")};
  cli::ReportOptions opt;
  opt.examples = 2;
  opt.compare = {"softmax", "lotformer-r2"};
  opt.compare_input.n = 16;
  opt.log_scale = true;
  opt.map_side = 8;  // the comparison's n = 16 is block-averaged 2 x 2
  const std::string page = cli::report_html(runs, opt);
  CHECK(page.find("block-averaged 2x2 (n = 16 -&gt; 8x8)") != std::string::npos);
  for (const char* id : {"metrics", "curves", "settings", "attention", "mechanisms"})
    CHECK(page.find(std::string("<section id=\"") + id + "\"") != std::string::npos);
  const size_t maps = 2 /*runs*/ * 2 /*examples*/ * 2 /*layers*/ * 2 /*heads*/ + 2 /*mechanisms*/ * 2 /*heads*/;
  CHECK(count(page, "<figure class=\"map\">") == maps);
  CHECK(count(page, "<figure class=\"chart\">") == 4);  // loss, train acc, dev acc, lr
  CHECK(count(page, "data:image/png;base64,") == maps);
  CHECK(count(page, "<table") == 6);  // end figures, settings (differ, same), inspect x 2, mechanisms
  CHECK(page.find("log10 scale") != std::string::npos);
  CHECK(page.find("1/(n min b)") != std::string::npos);
  CHECK(page.find("(the mechanism&#39;s bound ") != std::string::npos);  // LOTFormer's maps name their bound
  CHECK(page.find("singular values &gt; 1e-06") != std::string::npos);
  // self-contained: no link, no external script or image, no url()
  for (const char* bad : {"<link", "src=\"http", "src=\"//", "url(", "@import", "<iframe"}) CHECK(page.find(bad) == std::string::npos);
  CHECK(count(page, "<script") == 1);
  // a run that cannot show maps says why; the rest of the page is still drawn
  fs::remove(dir + "/lot/best.ckpt");
  runs[1] = models::load_run(dir + "/lot");
  const std::string page2 = cli::report_html(runs, opt);
  CHECK(page2.find("No best.ckpt in " + dir + "/lot") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("a report over 10 runs of 5000 steps stays small: curves cut to max_points") {
  const std::string dir = tmpdir("large");
  std::vector<models::RunData> runs;
  for (int k = 0; k < 10; ++k) {
    synthetic_log(dir + "/run" + std::to_string(k), 5000, k);
    runs.push_back(models::load_run(dir + "/run" + std::to_string(k)));
  }
  CHECK(runs[0].config_source.empty());
  CHECK(runs[0].best_dev == doctest::Approx(0.8));
  cli::ReportOptions opt;
  opt.compare.clear();
  const auto t0 = std::chrono::steady_clock::now();
  const std::string page = cli::report_html(runs, opt);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("10 runs x 5000 steps: " << page.size() / 1024 << " KB in " << s << " s");
  std::regex pts("data-points=\"([0-9]+)\"");
  size_t curves = 0;
  for (std::sregex_iterator it(page.begin(), page.end(), pts), end; it != end; ++it, ++curves) CHECK(std::stoul((*it)[1]) <= 1000);
  CHECK(curves == 10 * 4);
  CHECK(page.size() < 3u * 1024 * 1024);
  CHECK(page.find("No best.ckpt in") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("draw_heatmap: a title, the map's colours, axis ticks and a colour bar from the bottom to the top colour") {
  const int64_t n = 10;
  std::vector<double> a((size_t)(n * n));
  for (size_t i = 0; i < a.size(); ++i) a[i] = (double)i / (double)(a.size() - 1);
  cli::HeatmapStyle st;
  st.title = "T";
  st.cell = 4;
  const auto [w, h] = cli::heatmap_size(n, st);
  cli::Canvas c(w, h);
  const cli::MapScale sc = cli::map_scale(a, false);
  cli::draw_heatmap(c, 0, 0, a, n, sc, st);
  auto ink = [&](int x0, int y0, int x1, int y1) {
    int k = 0;
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) k += c.get(x, y) != 0xffffff;
    return k;
  };
  CHECK(ink(0, 0, 20, 12) > 5);  // the title
  // the map: entry (0, 0) is the bottom colour, entry (n-1, n-1) the top one
  int mx = -1, my = -1;
  for (int y = 0; y < h && mx < 0; ++y)
    for (int x = 0; x < w; ++x)
      if (c.get(x, y) == cli::viridis(0)) {
        mx = x, my = y;
        break;
      }
  REQUIRE(mx >= 0);
  INFO(mx << " " << my << " " << w << " " << h);
  CHECK(c.get(mx + 4 * (int)n - 1, my + 4 * (int)n - 1) == cli::viridis(1));
  CHECK(ink(mx - 40, my, mx - 1, my + 4 * (int)n) > 20);            // y tick labels and the axis name
  CHECK(ink(mx, my + 4 * (int)n + 1, mx + 4 * (int)n, h) > 20);     // x tick labels and the axis name
  const int bx = mx + 4 * (int)n + 10;                              // the colour bar
  CHECK(c.get(bx + 1, my) == cli::viridis(1));
  CHECK(c.get(bx + 1, my + 4 * (int)n - 1) == cli::viridis(0));
  CHECK(ink(bx + 14, my, w, my + 4 * (int)n) > 20);                 // its labels
}
