// `lotgrad report RUN_DIR... --out report.html`: one self-contained HTML page (inline CSS, SVG
// and JS, images as data: URIs; nothing fetched) that compares runs and mechanisms: each run's
// settings, the training and dev curves overlaid, the end figures side by side, the attention
// maps of each run's best checkpoint on chosen examples with the statistics `inspect` computes
// and their numerical rank, and the mechanisms of `lotgrad maps` on one input.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <lotgrad/models/report.h>

#include "maps.h"

namespace lotgrad::cli {

struct ReportOptions {
  std::string title = "lotgrad study report";
  int64_t examples = 2;          // attention maps of the first this many examples per run (0: none)
  std::vector<int64_t> example_ids;  // or of these examples of the split (when not empty)
  std::string split = "val";
  bool log_scale = false;        // colour scale of the maps
  int64_t max_points = 1000;     // per curve (downsample_minmax)
  int64_t map_side = 128;        // maps block-averaged to at most this many entries a side
  double rank_tol = 1e-6;        // numerical rank: singular values > rank_tol · σ_max
  int64_t rank_max_n = 256;      // ... computed for maps of at most this many tokens
  int64_t inspect_count = 20;    // examples averaged by the inspect statistics
  std::vector<std::string> compare = {"softmax", "sinkformer", "lotformer-r2", "lotformer-r4", "lotformer-r16", "espformer"};
  MapsInput compare_input;       // the one input of the mechanism comparison
};

// The whole page for the runs (already read with models::load_run).
std::string report_html(const std::vector<models::RunData>& runs, const ReportOptions& opt);

}  // namespace lotgrad::cli
