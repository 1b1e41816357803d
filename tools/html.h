// The pieces of `lotgrad report`'s self-contained HTML page: escaping, base64 for data: URIs,
// SVG line charts with a legend and auto-ranged axes, and tables. Everything is inline: the
// page fetches nothing.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lotgrad::cli {

std::string html_escape(const std::string& s);
std::string base64(const std::string& bytes);
std::string png_data_uri(const std::string& png_bytes);

// The colour of series k (a qualitative palette of 10, then repeated).
uint32_t series_colour(size_t k);
std::string css_colour(uint32_t rgb);  // "#rrggbb"

struct Series {
  std::string name;
  uint32_t colour = 0;
  std::vector<std::pair<double, double>> points;  // (x, y), x increasing
  bool dashed = false;
};
struct Chart {
  std::string title, xlabel = "step", ylabel;
  std::vector<Series> series;
};
// An <svg class="chart"> of the series overlaid: axes fitted to the data (nice ticks, not
// forced through 0), a legend naming each series, every curve cut to at most max_points points
// (downsample_minmax). Non-finite points are dropped. points_drawn, when given, receives the
// points drawn over all series.
std::string svg_line_chart(const Chart& c, size_t max_points, size_t* points_drawn = nullptr);

// A <table>: a header row and body rows (cells are escaped unless they start with '<').
// highlight_rows: row indices given class "differs".
std::string html_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                       const std::string& cls = "", const std::vector<size_t>& highlight_rows = {});

// A number for a table: "—" for NaN, else %.4g (or %.*f for fixed digits when digits >= 0).
std::string fmt_num(double v, int digits = -1);

}  // namespace lotgrad::cli
