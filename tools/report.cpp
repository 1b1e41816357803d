// `lotgrad report` (report.h): the page, section by section, and the command.
#include "report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <lotgrad/lotgrad.h>
#include <lotgrad/models/run_config.h>
#include <lotgrad/models/workload.h>
#include <set>
#include <sstream>

#include "checks.h"
#include "commands.h"
#include "figure.h"
#include "html.h"
#include "options.h"

namespace lotgrad::cli {

namespace {
using models::RunData;

const char* kStyle = R"(<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:2px;margin-top:32px}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}tr.differs td{background:#fff6d6}
figure{display:inline-block;margin:6px 10px 10px 0;vertical-align:top}figcaption{font-size:12px;color:#444;max-width:680px}
img.map{image-rendering:pixelated}.note{color:#555;font-size:13px}#selfcheck{font-size:11px;color:#888}
</style>)";

std::string section(const std::string& id, const std::string& title, const std::string& body) {
  return "<section id=\"" + id + "\"><h2>" + html_escape(title) + "</h2>" + body + "</section>\n";
}
std::string note(const std::string& text) { return "<p class=\"note\">" + html_escape(text) + "</p>"; }
// A figure and its caption; width > 0 keeps the caption as wide as the figure.
std::string figure(const std::string& content, const std::string& caption, const std::string& cls = "", int width = 0) {
  return "<figure" + (cls.empty() ? std::string() : " class=\"" + cls + "\"") + ">" + content + "<figcaption" +
         (width > 0 ? " style=\"max-width:" + std::to_string(std::max(width, 220)) + "px\"" : std::string()) + ">" +
         html_escape(caption) + "</figcaption></figure>";
}

// ---- settings ----------------------------------------------------------------------------
// A stored value for the table: numbers at 6 significant digits (0.1, not 0.10000000000000001).
std::string setting_text(const std::string& v) {
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || !std::isfinite(d)) return v;
  char b[32];
  std::snprintf(b, sizeof b, "%.6g", d);
  return b;
}

// Every stored setting and effective knob: row name, then one value per run.
std::vector<std::vector<std::string>> settings_rows(const std::vector<RunData>& runs) {
  std::vector<std::vector<std::string>> rows = {{"(read from)"}};
  for (const auto& r : runs) rows[0].push_back(r.config_source.empty() ? "none (metrics only)" : r.config_source);
  for (const auto& f : models::config_fields()) {
    if (f.role == models::Role::free) continue;
    rows.push_back({f.option});
    for (const auto& r : runs) rows.back().push_back(r.config_source.empty() ? "—" : setting_text(f.get(r.config)));
  }
  std::vector<std::map<std::string, double>> eff;
  std::set<std::string> knobs;
  for (const auto& r : runs) {
    eff.push_back(r.config_source.empty() ? std::map<std::string, double>() : models::effective_knobs(r.config));
    for (const auto& [k, v] : eff.back()) knobs.insert(k);
  }
  for (const auto& k : knobs) {
    rows.push_back({"knob " + k});
    for (const auto& e : eff) rows.back().push_back(e.count(k) ? fmt_num(e.at(k), -1) : "—");
  }
  return rows;
}

std::string settings_section(const std::vector<RunData>& runs) {
  std::vector<std::string> header = {"setting"};
  for (const auto& r : runs) header.push_back(r.name);
  std::vector<std::vector<std::string>> differ, same;
  for (auto& row : settings_rows(runs))
    (std::set<std::string>(row.begin() + 1, row.end()).size() > 1 ? differ : same).push_back(row);
  std::string body = note(std::to_string(differ.size()) + " settings differ between the runs (first table); " +
                          std::to_string(same.size()) + " are the same (folded below). Mechanism knobs are the effective "
                          "ones (the task's preset, then the run's own values).");
  if (!differ.empty()) body += html_table(header, differ, "settings");
  body += "<details><summary>" + std::to_string(same.size()) + " settings the runs share</summary>" +
          html_table(header, same, "settings") + "</details>";
  return section("settings", "Settings", body);
}

// ---- curves ------------------------------------------------------------------------------
// The (step, value) points of one metrics key.
std::vector<std::pair<double, double>> curve(const RunData& r, const std::string& key) {
  std::vector<std::pair<double, double>> p;
  for (const auto& rec : r.records)
    if (rec.has(key) && !rec.has("ms_per_step")) p.push_back({(double)rec.step, rec.values.at(key)});
  return p;
}

std::string curves_section(const std::vector<RunData>& runs, const ReportOptions& opt) {
  std::vector<std::pair<std::string, std::string>> keys = {{"loss", "training loss"}};
  std::set<std::string> metrics;
  for (const auto& r : runs) metrics.insert(r.metric);
  for (const auto& m : metrics) keys.push_back({"train_" + m, "train " + m + " (training windows)"});
  for (const auto& m : metrics) keys.push_back({"dev_" + m, "dev " + m});
  keys.push_back({"lr", "learning rate"});
  std::string body = note("Every curve is cut to at most " + std::to_string(opt.max_points) +
                          " points: the points are split into equal runs of consecutive steps and each run keeps its "
                          "smallest and largest value (min/max-preserving, so spikes stay visible). Axes are fitted to "
                          "the data with ticks of 1, 2 or 5 × 10^k; they do not start at 0 unless the data does.");
  for (const auto& [key, title] : keys) {
    Chart c{title, "step", key, {}};
    size_t total = 0;
    for (size_t k = 0; k < runs.size(); ++k) {
      Series s{runs[k].name, series_colour(k), curve(runs[k], key), false};
      total += s.points.size();
      if (!s.points.empty()) c.series.push_back(std::move(s));
    }
    if (c.series.empty()) continue;
    size_t drawn = 0;
    const std::string svg = svg_line_chart(c, (size_t)opt.max_points, &drawn);
    body += figure(svg, title + ": " + std::to_string(c.series.size()) + " runs, " + std::to_string(total) +
                            " logged points, " + std::to_string(drawn) + " drawn.",
                   "chart");
  }
  return section("curves", "Training and dev curves", body);
}

// ---- end figures -------------------------------------------------------------------------
std::string metrics_section(const std::vector<RunData>& runs) {
  std::vector<std::string> header = {"figure"};
  for (const auto& r : runs) header.push_back(r.name);
  std::vector<std::vector<std::string>> rows = {{"task"}, {"mechanism"}, {"steps (logged / set)"}, {"best dev"},
                                                {"best dev step"}, {"test at best dev"}, {"ms/step"}, {"tokens/s"}};
  for (const auto& r : runs) {
    const bool cfg = !r.config_source.empty();
    rows[0].push_back(cfg ? r.config.task : "—");
    rows[1].push_back(cfg ? r.config.attention : "—");
    rows[2].push_back(std::to_string(r.last_step) + " / " + (cfg ? std::to_string(r.config.steps) : "—"));
    rows[3].push_back(std::isnan(r.best_dev) ? "—" : r.metric + " " + fmt_num(r.best_dev));
    rows[4].push_back(r.best_step >= 0 ? std::to_string(r.best_step) : "—");
    rows[5].push_back(std::isnan(r.test) ? "—" : r.metric + " " + fmt_num(r.test));
    rows[6].push_back(fmt_num(r.ms_per_step, 1));
    rows[7].push_back(fmt_num(r.tokens_per_s, 0));
  }
  return section("metrics", "End figures",
                 note("Best dev: the best dev evaluation in metrics.jsonl. Test, ms/step and tokens/s: the record a "
                      "finished run writes after evaluating its best checkpoint (— for a run that stopped early or "
                      "predates it; tokens/s then is the mean of the logged training windows).") +
                     html_table(header, rows, "metrics"));
}

// ---- attention maps of a checkpoint ------------------------------------------------------
std::string map_figure(const std::vector<double>& a, int64_t n, const std::string& title, const ReportOptions& opt,
                       double bound = 0) {
  const Downsampled d = block_average(a, n, opt.map_side);
  HeatmapStyle st;
  st.title = title;
  st.cell = (int)std::clamp<int64_t>(256 / std::max<int64_t>(d.side, 1), 1, 24);
  st.index_step = d.factor;
  const MapScale sc = map_scale(d.values, opt.log_scale);
  const auto [w, h] = heatmap_size(d.side, st);
  Canvas c(w, h);
  draw_heatmap(c, 0, 0, d.values, d.side, sc, st);
  const std::string method = d.factor > 1 ? "block-averaged " + std::to_string(d.factor) + "x" + std::to_string(d.factor) +
                                                " (n = " + std::to_string(n) + " -> " + std::to_string(d.side) + "x" +
                                                std::to_string(d.side) + ")"
                                          : "every entry (n = " + std::to_string(n) + ")";
  const std::string scale = opt.log_scale ? "log10 scale over [" + fmt_num(sc.vmin) + ", " + fmt_num(sc.vmax) + "]"
                                          : "linear scale over [0, " + fmt_num(sc.vmax) + "]";
  return figure("<img class=\"map\" alt=\"" + html_escape(title) + "\" title=\"" + html_escape(title) + "\" width=\"" +
                    std::to_string(w) + "\" height=\"" + std::to_string(h) + "\" src=\"" + png_data_uri(c.png()) + "\">",
                title + ": " + method + ", " + scale + ", viridis (dark = low). Largest weight " +
                    fmt_num(*std::max_element(a.begin(), a.end())) +
                    (bound > 0 ? " (the mechanism's bound " + fmt_num(bound) + ")." : "."),
                "map", w);
}

std::string inspect_table(const RunData& r, const ReportOptions& opt, const std::vector<models::ExampleAttention>& ex) {
  std::ostringstream log;
  const auto rows = models::inspect_checkpoint(r.config, r.best_checkpoint, opt.split, opt.inspect_count, log);
  std::vector<std::string> header = {"layer", "head", "mechanism", "n", "row max (mean)", "max weight", "bound", "max/bound",
                                     "first token × n", "second × n", "entropy / log n", "max |colsum − 1|",
                                     "max |rowsum − 1|"};
  for (const auto& e : ex) header.push_back("rank, example " + std::to_string(e.index));
  std::vector<std::vector<std::string>> out;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& h = rows[i];
    std::vector<std::string> row = {std::to_string(h.layer), std::to_string(h.head), h.mechanism, fmt_num(h.n, 0), fmt_num(h.row_max),
                                    fmt_num(h.max_weight), h.bound > 0 ? fmt_num(h.bound) : "—",
                                    h.bound > 0 ? fmt_num(h.bound_used, 3) : "—", fmt_num(h.first_token, 2),
                                    fmt_num(h.second_token, 2), fmt_num(h.entropy, 3), fmt_num(h.col_dev, 4),
                                    fmt_num(h.row_dev, 4)};
    for (const auto& e : ex)
      row.push_back(i < e.rank.size() && e.rank[i] >= 0 ? std::to_string(e.rank[i]) + " / " + std::to_string(e.n) : "— (n > " + std::to_string(opt.rank_max_n) + ")");
    out.push_back(row);
  }
  return note("Statistics of `lotgrad inspect` over the first " + std::to_string(opt.inspect_count) + " " + opt.split +
              " examples (one at a time, unpadded): bound = the weight bound the mechanism declares (LOTFormer: "
              "1/(n min b)), max/bound = the largest share of its own bound an example used; first/second token × n: the "
              "weight queries put on them relative to uniform (1). Numerical rank: singular values > " +
              fmt_num(opt.rank_tol) + " × the largest, of the example's map (rank / n).") +
         html_table(header, out, "inspect");
}

std::string run_maps(const RunData& r, const ReportOptions& opt) {
  if (r.best_checkpoint.empty()) return note("No best.ckpt in " + r.dir + ": no attention maps.");
  if (r.config_source.empty()) return note("No stored settings: the model cannot be rebuilt.");
  std::ostringstream log;
  try {
    std::vector<int64_t> ids = opt.example_ids;
    if (ids.empty())
      for (int64_t e = 0; e < opt.examples; ++e) ids.push_back(e);  // the first ones (fewer when the split is shorter)
    const auto ex = models::checkpoint_attention(r.config, r.best_checkpoint, opt.split, ids, opt.rank_tol, opt.rank_max_n,
                                                 log, /*skip_missing=*/opt.example_ids.empty());
    std::string body = inspect_table(r, opt, ex);
    for (const auto& e : ex) {
      body += "<h4>" + html_escape(opt.split) + " example " + std::to_string(e.index) + " (n = " + std::to_string(e.n) + ")</h4>";
      for (int64_t l = 0; l < e.layers; ++l)
        for (int64_t h = 0; h < e.heads; ++h)
          body += map_figure(e.maps[(size_t)(l * e.heads + h)], e.n,
                             r.name + " ex " + std::to_string(e.index) + " layer " + std::to_string(l) + " head " + std::to_string(h),
                             opt, e.bound[(size_t)(l * e.heads + h)]);
    }
    return body;
  } catch (const std::exception& err) {  // an unsupported task: said on the page (and here), the rest still drawn
    std::fprintf(stderr, "lotgrad report: %s: no attention maps: %s\n", r.dir.c_str(), err.what());
    return note(std::string("No attention maps: ") + err.what());
  }
}

std::string attention_section(const std::vector<RunData>& runs, const ReportOptions& opt) {
  if (opt.examples == 0 && opt.example_ids.empty())
    return section("attention", "Attention of the best checkpoints", note("--examples 0: none drawn."));
  std::string body;
  for (const auto& r : runs)
    body += "<h3>" + html_escape(r.name) + " (" + html_escape(r.config_source.empty() ? "?" : r.config.attention) + ")</h3>" +
            run_maps(r, opt);
  return section("attention", "Attention of the best checkpoints", body);
}

// ---- mechanisms on one input -------------------------------------------------------------
std::string compare_section(const ReportOptions& opt) {
  if (opt.compare.empty()) return "";
  const auto all = mechanism_maps(opt.compare, opt.compare_input);
  std::vector<std::vector<std::string>> rows;
  std::string figs;
  for (const auto& m : all)
    for (size_t h = 0; h < m.maps.size(); ++h) {
      rows.push_back({m.label, std::to_string(h), fmt_num(m.max[h]), m.bound.empty() ? "—" : fmt_num(m.bound[h]),
                      "[" + fmt_num(m.row_sum_lo[h]) + ", " + fmt_num(m.row_sum_hi[h]) + "]",
                      "[" + fmt_num(m.col_sum_lo[h]) + ", " + fmt_num(m.col_sum_hi[h]) + "]", fmt_num(m.entropy[h], 3),
                      std::to_string(m.rank[h])});
      figs += map_figure(m.maps[h], opt.compare_input.n, m.label + " head " + std::to_string(h), opt,
                         m.bound.empty() ? 0.0 : m.bound[h]);
    }
  const int64_t n = opt.compare_input.n;
  return section("mechanisms", "Mechanisms on one input (as lotgrad maps)",
                 note("One attention layer per mechanism, all with the same query/key/value projection weights, on one "
                      "input: " + maps_input_summary(opt.compare_input) + ". Uniform weight 1/n = " + fmt_num(1.0 / n) +
                      ", entropy of a uniform row ln n = " + fmt_num(std::log((double)n), 3) +
                      ". Rank: singular values > 1e-6 × the largest.") +
                     html_table({"mechanism", "head", "max", "bound", "row sums", "column sums", "entropy", "rank"}, rows,
                                "mechanisms") +
                     figs);
}

// The page checks itself once loaded: every figure holds a drawn image or a chart with points,
// every table has body rows; it writes the outcome into #selfcheck (read by the browser test
// from the DOM) and records any script error there too.
const char* kSelfCheck = R"(<script>
(function(){
  var errors=[];
  window.addEventListener('error',function(e){errors.push(String(e.message));});
  window.addEventListener('load',function(){
    var bad=[],figs=document.querySelectorAll('figure'),tabs=document.querySelectorAll('table');
    figs.forEach(function(f,i){
      var img=f.querySelector('img'),svg=f.querySelector('svg');
      if(img){if(!(img.complete&&img.naturalWidth>0))bad.push('figure '+i+' image not decoded');}
      else if(svg){var p=svg.querySelectorAll('polyline');var pts=0;p.forEach(function(q){pts+=q.points.numberOfItems;});
        if(pts==0||svg.getBoundingClientRect().width==0)bad.push('figure '+i+' chart empty');}
      else bad.push('figure '+i+' holds nothing');
      if(!f.querySelector('figcaption')||!f.querySelector('figcaption').textContent)bad.push('figure '+i+' no caption');
    });
    tabs.forEach(function(t,i){if(t.querySelectorAll('tbody tr').length==0)bad.push('table '+i+' empty');});
    var ms=Math.round(performance.now());
    var el=document.getElementById('selfcheck');
    var ok=bad.length==0&&errors.length==0&&figs.length>0&&tabs.length>0;
    el.setAttribute('data-status',ok?'ok':'fail');
    el.textContent='selfcheck '+(ok?'ok':'FAIL')+' figures='+figs.length+' tables='+tabs.length+' load_ms='+ms+
      (bad.length?' problems: '+bad.join('; '):'')+(errors.length?' errors: '+errors.join('; '):'');
  });
})();
</script>)";
}  // namespace

std::string report_html(const std::vector<RunData>& runs, const ReportOptions& opt) {
  std::string list;
  for (size_t k = 0; k < runs.size(); ++k)
    list += "<li><span style=\"color:" + css_colour(series_colour(k)) + "\">■</span> <b>" + html_escape(runs[k].name) +
            "</b>: " + html_escape(runs[k].dir) + "</li>";
  std::string page = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + html_escape(opt.title) +
                     "</title>" + kStyle + "</head><body>\n<h1>" + html_escape(opt.title) + "</h1>" +
                     note(std::string("Made by lotgrad ") + LOTGRAD_VERSION + " (lotgrad report). One file: nothing is fetched.") +
                     "<ul>" + list + "</ul>\n";
  page += metrics_section(runs) + curves_section(runs, opt) + settings_section(runs) + attention_section(runs, opt) +
          compare_section(opt);
  return page + "<p id=\"selfcheck\" data-status=\"pending\">selfcheck pending</p>" + kSelfCheck + "</body></html>\n";
}

int cmd_report(int argc, char** argv) {
  CLI::App app("One self-contained HTML page (nothing fetched) comparing runs: each run's settings (config.json, or the\n"
               "settings a checkpoint stores), the training and dev curves overlaid, the end figures side by side, the\n"
               "attention maps of each run's best.ckpt on --examples examples per layer and head (titles, axes, colour\n"
               "bar) with the statistics of lotgrad inspect and the numerical rank, and the mechanisms of lotgrad maps\n"
               "on one input. Large inputs stay usable: curves cut to --max-points (min/max-preserving), maps block-averaged\n"
               "to --map-side. No --json.",
               "lotgrad report");
  std::vector<std::string> dirs;
  std::string out = "report.html", scale = "linear";
  ReportOptions opt;
  int64_t threads = 0;
  app.add_option("runs", dirs, "run directories (config.json, metrics.jsonl, best.ckpt)")->required()->check(CLI::ExistingDirectory);
  app.add_option("--out", out, "the HTML file to write")->capture_default_str();
  app.add_option("--title", opt.title, "the page's title")->capture_default_str();
  add_number(app, "--examples", opt.examples, 0, 64, "the first this many examples' attention maps are drawn, per run");
  app.add_option("--example-ids", opt.example_ids, "or these examples of the split (comma-separated indices)")
      ->delimiter(',')->check(CLI::Range((int64_t)0, (int64_t)1e9));
  add_choice(app, "--split", opt.split, {"train", "val", "test"}, "the split the examples come from");
  add_choice(app, "--scale", scale, {"linear", "log"}, "colour scale of the maps");
  add_number(app, "--max-points", opt.max_points, 2, 1e7, "points per curve at most");
  add_number(app, "--map-side", opt.map_side, 8, 1024, "maps block-averaged to at most this many entries a side");
  add_number(app, "--rank-tol", opt.rank_tol, 1e-15, 1, "numerical rank: singular values above this times the largest");
  add_number(app, "--rank-max-n", opt.rank_max_n, 0, 4096, "numerical rank of maps with at most this many tokens (O(n^3))");
  add_number(app, "--inspect-count", opt.inspect_count, 1, 1e6, "examples averaged by the inspect statistics");
  app.add_option("--compare", opt.compare, "mechanisms compared on one input (as lotgrad maps); none: no comparison")
      ->delimiter(',')->capture_default_str();
  add_number(app, "--compare-n", opt.compare_input.n, 2, 1024, "tokens of the comparison's input");
  add_threads_applied(app, threads);
  after_parse(app, [&] {
    opt.log_scale = scale == "log";
    if (opt.compare.size() == 1 && opt.compare[0] == "none") opt.compare.clear();
    for (const auto& m : opt.compare) check_map_name(m, opt.compare_input.settings);
  });
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  std::vector<models::RunData> runs;
  for (const auto& d : dirs) runs.push_back(models::load_run(d));
  const std::string page = report_html(runs, opt);
  std::ofstream f(out, std::ios::binary);
  f << page;
  f.close();
  if (!f) throw IOError("report: cannot write " + out);
  std::printf("wrote %s (%zu runs, %.1f KB)\n", out.c_str(), runs.size(), (double)page.size() / 1024.0);
  return 0;
}

}  // namespace lotgrad::cli
