// The computation behind `lotgrad maps`, shared with `lotgrad report`'s mechanism comparison:
// one MultiHeadAttention layer per mechanism, all with the same query/key/value projection
// weights, on one (1, n, d_model) input, and the statistics students compare.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <lotgrad/lotgrad.h>

namespace lotgrad::cli {

// maps' own settings of the mechanisms it draws (maps-specific defaults).
struct MapSettings {
  double lot_eps = 0.1, lot_init_std = -1.0;
  int64_t lot_half_steps = 50, sink_half_steps = 21;
};

struct MapsInput {
  int64_t n = 64, d_model = 64, heads = 2, blocks = 4, seed = 0;
  std::string input = "blocks";  // blocks: --blocks token types in contiguous runs (+ noise); random: N(0, 1)
  double noise = 0.5;
  double weight_std = 0;         // 0: 1.5 / sqrt(d_model)
  MapSettings settings;
};

// One mechanism's maps and statistics, per head.
struct MechanismMaps {
  std::string label;                     // "lotformer-r4"
  std::vector<std::vector<double>> maps;  // [head]: n×n row-major
  std::vector<double> max, bound;         // bound: the declared weight bound; empty when none
  std::vector<double> row_sum_lo, row_sum_hi, col_sum_lo, col_sum_hi, entropy;  // entropy: mean over rows
  std::vector<int64_t> rank;              // singular values > 1e-6 · σ_max
};

// "lotformer-r4" -> lotformer with r = 4; other names are registry names. Refuses a bad name
// (naming --mechanisms) before any work.
void check_map_name(const std::string& name, const MapSettings& st);
// The maps of every mechanism named, on the input `in` describes (deterministic in in.seed).
std::vector<MechanismMaps> mechanism_maps(const std::vector<std::string>& names, const MapsInput& in);
// The input description printed above the table (and in the report's caption).
std::string maps_input_summary(const MapsInput& in);

}  // namespace lotgrad::cli
