#include "html.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "figure.h"

namespace lotgrad::cli {

std::string html_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string base64(const std::string& b) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string o;
  o.reserve((b.size() + 2) / 3 * 4);
  for (size_t i = 0; i < b.size(); i += 3) {
    const uint32_t v = (uint32_t)(uint8_t)b[i] << 16 | (i + 1 < b.size() ? (uint32_t)(uint8_t)b[i + 1] << 8 : 0) |
                       (i + 2 < b.size() ? (uint32_t)(uint8_t)b[i + 2] : 0);
    o += k[v >> 18 & 63];
    o += k[v >> 12 & 63];
    o += i + 1 < b.size() ? k[v >> 6 & 63] : '=';
    o += i + 2 < b.size() ? k[v & 63] : '=';
  }
  return o;
}

std::string png_data_uri(const std::string& png) { return "data:image/png;base64," + base64(png); }

uint32_t series_colour(size_t k) {
  static const uint32_t p[] = {0x1f77b4, 0xd62728, 0x2ca02c, 0x9467bd, 0xff7f0e,
                               0x17becf, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22};
  return p[k % 10];
}
std::string css_colour(uint32_t rgb) {
  char b[8];
  std::snprintf(b, sizeof b, "#%06x", rgb & 0xffffff);
  return b;
}

std::string fmt_num(double v, int digits) {
  if (!std::isfinite(v)) return "—";
  char b[32];
  if (digits >= 0) std::snprintf(b, sizeof b, "%.*f", digits, v);
  else std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

namespace {
constexpr int kW = 660, kH = 300, kL = 64, kR = 170, kT = 28, kB = 44;  // size and margins (legend on the right)

std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

// The x and y ranges of the finite points.
void data_range(const Chart& c, double& x0, double& x1, double& y0, double& y1) {
  x0 = y0 = INFINITY, x1 = y1 = -INFINITY;
  for (const auto& s : c.series)
    for (const auto& [x, y] : s.points)
      if (std::isfinite(x) && std::isfinite(y)) {
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
      }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
}

std::string axes(const Ticks& tx, const Ticks& ty, const Chart& c) {
  const int pw = kW - kL - kR, ph = kH - kT - kB;
  std::string s = "<rect x=\"" + std::to_string(kL) + "\" y=\"" + std::to_string(kT) + "\" width=\"" + std::to_string(pw) +
                  "\" height=\"" + std::to_string(ph) + "\" fill=\"none\" stroke=\"#888\"/>";
  for (double v : tx.values) {
    const double X = kL + (v - tx.lo) / (tx.hi - tx.lo) * pw;
    s += "<line x1=\"" + fmt(X) + "\" y1=\"" + std::to_string(kT) + "\" x2=\"" + fmt(X) + "\" y2=\"" + std::to_string(kT + ph) +
         "\" stroke=\"#eee\"/><text x=\"" + fmt(X) + "\" y=\"" + std::to_string(kT + ph + 15) +
         "\" text-anchor=\"middle\">" + tick_label(v, tx.step) + "</text>";
  }
  for (double v : ty.values) {
    const double Y = kT + ph - (v - ty.lo) / (ty.hi - ty.lo) * ph;
    s += "<line x1=\"" + std::to_string(kL) + "\" y1=\"" + fmt(Y) + "\" x2=\"" + std::to_string(kL + pw) + "\" y2=\"" + fmt(Y) +
         "\" stroke=\"#eee\"/><text x=\"" + std::to_string(kL - 5) + "\" y=\"" + fmt(Y + 4) +
         "\" text-anchor=\"end\">" + tick_label(v, ty.step) + "</text>";
  }
  s += "<text x=\"" + std::to_string(kL + pw / 2) + "\" y=\"" + std::to_string(kH - 8) + "\" text-anchor=\"middle\">" +
       html_escape(c.xlabel) + "</text>";
  s += "<text transform=\"translate(14 " + std::to_string(kT + ph / 2) + ") rotate(-90)\" text-anchor=\"middle\">" +
       html_escape(c.ylabel) + "</text>";
  s += "<text x=\"" + std::to_string(kL) + "\" y=\"18\" class=\"title\">" + html_escape(c.title) + "</text>";
  return s;
}
}  // namespace

std::string svg_line_chart(const Chart& c, size_t max_points, size_t* points_drawn) {
  double x0, x1, y0, y1;
  data_range(c, x0, x1, y0, y1);
  const Ticks tx = nice_ticks(x0, x1, 6), ty = nice_ticks(y0, y1, 5);
  const int pw = kW - kL - kR, ph = kH - kT - kB;
  std::string s = "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 " + std::to_string(kW) + " " +
                  std::to_string(kH) + "\" width=\"" + std::to_string(kW) + "\" height=\"" + std::to_string(kH) +
                  "\" data-series=\"" + std::to_string(c.series.size()) + "\">" + axes(tx, ty, c);
  size_t drawn = 0;
  for (size_t k = 0; k < c.series.size(); ++k) {
    const Series& se = c.series[k];
    std::vector<std::pair<double, double>> pts;
    for (const auto& p : se.points)
      if (std::isfinite(p.first) && std::isfinite(p.second)) pts.push_back(p);
    pts = downsample_minmax(pts, max_points);
    drawn += pts.size();
    std::string poly;
    for (const auto& [x, y] : pts)
      poly += fmt(kL + (x - tx.lo) / (tx.hi - tx.lo) * pw) + "," + fmt(kT + ph - (y - ty.lo) / (ty.hi - ty.lo) * ph) + " ";
    const std::string col = css_colour(se.colour);
    s += "<polyline class=\"curve\" data-points=\"" + std::to_string(pts.size()) + "\" fill=\"none\" stroke=\"" + col +
         "\" stroke-width=\"1.5\"" + (se.dashed ? " stroke-dasharray=\"5 3\"" : "") + " points=\"" + poly + "\"/>";
    if (pts.size() == 1)  // one point draws no line: a dot
      s += "<circle cx=\"" + poly.substr(0, poly.find(',')) + "\" cy=\"" + poly.substr(poly.find(',') + 1) +
           "\" r=\"3\" fill=\"" + col + "\"/>";
    const int ly = kT + 8 + 16 * (int)k;  // the legend entry
    s += "<g class=\"legend\"><line x1=\"" + std::to_string(kW - kR + 12) + "\" y1=\"" + std::to_string(ly) + "\" x2=\"" +
         std::to_string(kW - kR + 32) + "\" y2=\"" + std::to_string(ly) + "\" stroke=\"" + col + "\" stroke-width=\"3\"" +
         (se.dashed ? " stroke-dasharray=\"5 3\"" : "") + "/><text x=\"" + std::to_string(kW - kR + 36) + "\" y=\"" +
         std::to_string(ly + 4) + "\">" + html_escape(se.name.substr(0, 22)) + "</text></g>";
  }
  if (points_drawn) *points_drawn = drawn;
  return s + "</svg>";
}

std::string html_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                       const std::string& cls, const std::vector<size_t>& highlight_rows) {
  auto cell = [](const std::string& v) { return !v.empty() && v[0] == '<' ? v : html_escape(v); };
  std::string s = "<table" + (cls.empty() ? std::string() : " class=\"" + cls + "\"") + "><thead><tr>";
  for (const auto& h : header) s += "<th>" + cell(h) + "</th>";
  s += "</tr></thead><tbody>";
  for (size_t r = 0; r < rows.size(); ++r) {
    const bool hl = std::find(highlight_rows.begin(), highlight_rows.end(), r) != highlight_rows.end();
    s += hl ? "<tr class=\"differs\">" : "<tr>";
    for (const auto& v : rows[r]) s += "<td>" + cell(v) + "</td>";
    s += "</tr>";
  }
  return s + "</tbody></table>";
}

}  // namespace lotgrad::cli
