#include "icl_regression.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <string>

#include "dataset.h"
#include "../core/io.h"
#include "detail.h"

namespace lotgrad::data {

namespace {
[[noreturn]] void bad(const std::string& option, const std::string& value, const std::string& need) {
  throw std::invalid_argument("icl_regression: " + option + " = " + value + ": " + need);
}
std::string str(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
std::string str(int64_t v) { return std::to_string(v); }

// N(0, 1) from two uniform draws (Box-Muller, the cosine half).
double normal(detail::Rng& rng) {
  const double u1 = ((double)(rng.bits() >> 11) + 0.5) * 0x1.0p-53, u2 = rng.uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

double dot(const double* a, const double* b, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// One Jacobi rotation zeroing a(p, q) of the symmetric m×m `a`; v accumulates the rotations.
void jacobi_rotate(std::vector<double>& a, std::vector<double>& v, int64_t m, int64_t p, int64_t q) {
  const double apq = a[p * m + q];
  if (apq == 0.0) return;
  const double tau = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
  const double t = (tau >= 0 ? 1.0 : -1.0) / (std::fabs(tau) + std::sqrt(1.0 + tau * tau));
  const double c = 1.0 / std::sqrt(1.0 + t * t), s = t * c;
  for (int64_t k = 0; k < m; ++k) {  // A J, V J (columns p, q)
    const double akp = a[k * m + p], akq = a[k * m + q], vkp = v[k * m + p], vkq = v[k * m + q];
    a[k * m + p] = c * akp - s * akq, a[k * m + q] = s * akp + c * akq;
    v[k * m + p] = c * vkp - s * vkq, v[k * m + q] = s * vkp + c * vkq;
  }
  for (int64_t k = 0; k < m; ++k) {  // Jᵀ A (rows p, q)
    const double apk = a[p * m + k], aqk = a[q * m + k];
    a[p * m + k] = c * apk - s * aqk, a[q * m + k] = s * apk + c * aqk;
  }
}

// z = M⁺ b for a symmetric positive semi-definite M (m×m): cyclic Jacobi eigen-decomposition;
// eigenvalues below 1e-11·λ_max count as 0.
std::vector<double> pinv_solve(std::vector<double> a, int64_t m, const std::vector<double>& b) {
  std::vector<double> v((size_t)(m * m), 0.0);
  for (int64_t i = 0; i < m; ++i) v[i * m + i] = 1.0;
  const double total = dot(a.data(), a.data(), m * m);
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0.0;
    for (int64_t p = 0; p < m; ++p)
      for (int64_t q = p + 1; q < m; ++q) off += a[p * m + q] * a[p * m + q];
    if (off <= 1e-32 * total) break;
    for (int64_t p = 0; p < m; ++p)
      for (int64_t q = p + 1; q < m; ++q) jacobi_rotate(a, v, m, p, q);
  }
  double lmax = 0.0;
  for (int64_t i = 0; i < m; ++i) lmax = std::max(lmax, a[i * m + i]);
  std::vector<double> z((size_t)m, 0.0);
  for (int64_t j = 0; j < m; ++j) {
    const double l = a[j * m + j];
    if (!(l > 1e-11 * lmax)) continue;
    double vb = 0.0;
    for (int64_t i = 0; i < m; ++i) vb += v[i * m + j] * b[(size_t)i];
    for (int64_t i = 0; i < m; ++i) z[(size_t)i] += v[i * m + j] * vb / l;
  }
  return z;
}

// ŵ (d) from the first k pairs: Xᵀ(XXᵀ + diag(r))⁺ y with X (k, d). When every r_i is the same
// r and k > d, the equal and smaller (XᵀX + rI)⁺ Xᵀy is solved instead.
std::vector<double> fit(const IclPrompt& p, int64_t k, const std::vector<double>& r) {
  const int64_t d = p.dim;
  const bool equal = std::all_of(r.begin(), r.begin() + k, [&](double v) { return v == r[0]; });
  std::vector<double> w((size_t)d, 0.0);
  if (equal && k > d) {
    std::vector<double> g((size_t)(d * d), 0.0), xty((size_t)d, 0.0);  // XᵀX + rI (d, d), Xᵀy (d)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t a = 0; a < d; ++a) {
        xty[(size_t)a] += p.x(i)[a] * p.ys[(size_t)i];
        for (int64_t b = 0; b < d; ++b) g[a * d + b] += p.x(i)[a] * p.x(i)[b];
      }
    for (int64_t a = 0; a < d; ++a) g[a * d + a] += r[0];
    return pinv_solve(std::move(g), d, xty);
  }
  std::vector<double> g((size_t)(k * k)), y(p.ys.begin(), p.ys.begin() + k);  // XXᵀ + diag(r) (k, k)
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) g[i * k + j] = dot(p.x(i), p.x(j), d) + (i == j ? r[(size_t)i] : 0.0);
  const std::vector<double> z = pinv_solve(std::move(g), k, y);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t a = 0; a < d; ++a) w[(size_t)a] += p.x(i)[a] * z[(size_t)i];
  return w;
}

// Prediction k = x_k · ŵ(first k pairs) for every k (0 for k = 0).
std::vector<double> prefix_predictions(const IclPrompt& p, const std::vector<double>& r) {
  std::vector<double> out((size_t)p.points, 0.0);
  for (int64_t k = 1; k < p.points; ++k) out[(size_t)k] = dot(p.x(k), fit(p, k, r).data(), p.dim);
  return out;
}

void check_size(const char* name, const std::vector<double>& v, size_t n) {
  if (v.size() != n) bad(std::string(name) + " size", str((int64_t)v.size()), "must be " + str((int64_t)n));
}
}  // namespace

void validate(const IclRegressionOptions& o) {
  if (o.dim < 1) bad("dim", str(o.dim), "must be >= 1");
  if (o.points < 1) bad("points", str(o.points), "must be >= 1");
  if (o.active_dims < 0 || o.active_dims > o.dim)
    bad("active_dims", str(o.active_dims), "must be in 0..dim = " + str(o.dim) + " (0 = all)");
  if (!(o.x_std > 0.0) || !std::isfinite(o.x_std)) bad("x_std", str(o.x_std), "must be finite and > 0");
  if (!(o.w_std > 0.0) || !std::isfinite(o.w_std)) bad("w_std", str(o.w_std), "must be finite and > 0");
  if (!(o.noise_std >= 0.0) || !std::isfinite(o.noise_std)) bad("noise_std", str(o.noise_std), "must be finite and >= 0");
  if (!o.point_noise_std.empty() && (int64_t)o.point_noise_std.size() != o.points)
    bad("point_noise_std size", str((int64_t)o.point_noise_std.size()), "must be points = " + str(o.points) + " or 0");
  for (double s : o.point_noise_std)
    if (!(s >= 0.0) || !std::isfinite(s)) bad("point_noise_std", str(s), "every entry must be finite and >= 0");
}

IclPrompt icl_prompt(const IclRegressionOptions& o, int64_t index) {
  validate(o);
  detail::Rng rng(detail::subseed(o.seed ^ 0x69636c72ULL, (uint64_t)index));
  const int64_t d = o.dim, n = o.points, active = o.active_dims ? o.active_dims : d;
  IclPrompt p;
  p.dim = d, p.points = n;
  p.w.resize((size_t)d);
  for (double& v : p.w) v = o.w_std * normal(rng);
  p.xs.assign((size_t)(n * d), 0.0);
  p.ys.resize((size_t)n);
  p.noise_var.resize((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t a = 0; a < active; ++a) p.xs[(size_t)(i * d + a)] = o.x_std * normal(rng);
    const double s = o.point_noise_std.empty() ? o.noise_std : o.point_noise_std[(size_t)i];
    p.noise_var[(size_t)i] = s * s;
    p.ys[(size_t)i] = dot(p.x(i), p.w.data(), d) + (s > 0.0 ? s * normal(rng) : 0.0);
  }
  return p;
}

std::vector<IclPrompt> generate_icl_regression(int64_t count, const IclRegressionOptions& opt, int64_t first) {
  if (count < 0) bad("count", str(count), "must be >= 0");
  validate(opt);
  return detail::generate_range(count, first, [&](int64_t i) { return icl_prompt(opt, i); });
}

IclBatch icl_batch(const std::vector<IclPrompt>& prompts, const std::vector<int64_t>& indices) {
  const int64_t b = (int64_t)indices.size();
  const IclPrompt* p0 = b ? &prompts.at((size_t)indices[0]) : nullptr;
  const int64_t n = p0 ? p0->points : 0, d = p0 ? p0->dim : 0;
  std::vector<float> tok((size_t)(b * 2 * n * d), 0.0f), tg((size_t)(b * n));
  for (int64_t r = 0; r < b; ++r) {
    const IclPrompt& p = prompts.at((size_t)indices[(size_t)r]);
    if (p.points != n || p.dim != d)
      bad("prompt " + str(indices[(size_t)r]) + " shape", str(p.points) + "x" + str(p.dim),
          "a batch needs one shape, " + str(n) + "x" + str(d));
    for (int64_t i = 0; i < n; ++i) {
      float* row = tok.data() + (r * 2 * n + 2 * i) * d;
      for (int64_t a = 0; a < d; ++a) row[a] = (float)p.x(i)[a];
      row[d] = (float)p.ys[(size_t)i];  // row[d] starts row 2i + 1 = [y_i, 0, ..., 0]
      tg[(size_t)(r * n + i)] = (float)p.ys[(size_t)i];
    }
  }
  return {Tensor::from_vector(tok, {b, 2 * n, d}), Tensor::from_vector(tg, {b, n})};
}

IclPrompt restrict_prompt(const IclPrompt& p, int64_t points, int64_t active_dims) {
  if (points < 1 || points > p.points) bad("points", str(points), "must be in 1..prompt points = " + str(p.points));
  if (active_dims < 0 || active_dims > p.dim)
    bad("active_dims", str(active_dims), "must be in 0..dim = " + str(p.dim) + " (0 = all)");
  const int64_t d = p.dim, active = active_dims ? active_dims : d;
  IclPrompt q;
  q.dim = d, q.points = points, q.w = p.w;
  q.xs.assign(p.xs.begin(), p.xs.begin() + points * d);
  q.noise_var.assign(p.noise_var.begin(), p.noise_var.begin() + points);
  q.ys.resize((size_t)points);
  for (int64_t i = 0; i < points; ++i) {
    q.ys[(size_t)i] = p.ys[(size_t)i];
    bool changed = false;
    for (int64_t a = active; a < d; ++a) {
      changed = changed || q.xs[(size_t)(i * d + a)] != 0.0;
      q.xs[(size_t)(i * d + a)] = 0.0;
    }
    if (!changed) continue;  // keeps y bit-exact when only points are cut
    const double noise = p.ys[(size_t)i] - dot(p.x(i), p.w.data(), d);  // exactly 0 when noiseless
    q.ys[(size_t)i] = dot(q.x(i), q.w.data(), d) + noise;
  }
  return q;
}

IclBatch icl_batch(const std::vector<IclPrompt>& prompts, const std::vector<int64_t>& indices, int64_t points,
                   int64_t active_dims) {
  std::vector<IclPrompt> cut;
  cut.reserve(indices.size());
  std::vector<int64_t> order;
  for (int64_t i : indices) {
    cut.push_back(restrict_prompt(prompts.at((size_t)i), points, active_dims));
    order.push_back((int64_t)order.size());
  }
  return icl_batch(cut, order);
}

std::vector<double> heterogeneous_noise(int64_t points, double sigma) {
  if (points < 0) bad("points", str(points), "must be >= 0");
  if (!(sigma >= 0.0) || !std::isfinite(sigma)) bad("sigma", str(sigma), "must be finite and >= 0");
  std::vector<double> s((size_t)points, 0.0);
  for (int64_t i = points / 2; i < points; ++i) s[(size_t)i] = sigma;
  return s;
}

// ---- Files -----------------------------------------------------------------------------------

namespace {
constexpr const char* kIclMagic = "lotgrad-icl-prompts v1";

[[noreturn]] void bad_file(const std::string& path, int64_t line, const std::string& what) {
  throw std::invalid_argument(path + ":" + std::to_string(line) + ": " + what);
}

void append_numbers(std::string& out, const double* v, size_t n) {
  char buf[32];
  for (size_t i = 0; i < n; ++i) {
    if (i) out += ' ';
    const auto r = std::to_chars(buf, buf + sizeof buf, v[i]);  // shortest exact form
    out.append(buf, r.ptr);
  }
}

// Parses exactly n space-separated finite numbers of `text` into out; "" or why it failed.
std::string parse_numbers(std::string_view text, size_t n, std::vector<double>& out) {
  std::string_view bad;
  const int64_t at = detail::parse_spaced(text, out, bad, [](double v) { return std::isfinite(v); });
  if (at >= 0) {
    std::string why = "'";  // appended, not "'" + string: GCC 12 gives a false -Wrestrict there
    why.append(bad);
    return why + "' (number " + std::to_string(at) + ") is not a finite number";
  }
  if (out.size() != n) return "has " + std::to_string(out.size()) + " numbers, expected " + std::to_string(n);
  return "";
}

// One prompt line (fields split at tabs), every count and value checked.
IclPrompt parse_prompt(const std::string& path, int64_t lineno, const std::string& line) {
  const std::vector<std::string> f = detail::split(line, '\t');
  if (f.size() != 5)
    bad_file(path, lineno,
             "expected 5 tab-separated fields (dim points, w, noise_var, xs, ys), got " + str((int64_t)f.size()));
  const std::vector<std::string> shape = detail::split_ws(f[0]);
  IclPrompt p;
  if (shape.size() != 2 || !detail::parse_int(shape[0], p.dim) || !detail::parse_int(shape[1], p.points) ||
      p.dim < 1 || p.points < 1)
    bad_file(path, lineno, "field 1 must be 'dim points' with both >= 1, got '" + f[0] + "'");
  const size_t d = (size_t)p.dim, n = (size_t)p.points;
  struct Field { const char* name; std::vector<double>* out; size_t count; };
  const Field fields[4] = {{"w", &p.w, d}, {"noise_var", &p.noise_var, n}, {"xs", &p.xs, n * d}, {"ys", &p.ys, n}};
  for (int k = 0; k < 4; ++k) {
    const std::string why = parse_numbers(f[(size_t)k + 1], fields[k].count, *fields[k].out);
    if (!why.empty()) bad_file(path, lineno, std::string(fields[k].name) + ": " + why);
  }
  for (size_t i = 0; i < n; ++i)
    if (p.noise_var[i] < 0.0)
      bad_file(path, lineno, "noise_var " + str(p.noise_var[i]) + " of point " + str((int64_t)i) + " is negative");
  return p;
}
}  // namespace

void write_icl_prompts(const std::string& path, const std::vector<IclPrompt>& prompts) {
  std::string text = std::string(kIclMagic) + " prompts=" + std::to_string(prompts.size()) + "\n";
  for (size_t k = 0; k < prompts.size(); ++k) {
    const IclPrompt& p = prompts[k];
    const size_t d = (size_t)p.dim, n = (size_t)p.points;
    if (p.dim < 1 || p.points < 1 || p.w.size() != d || p.noise_var.size() != n || p.xs.size() != n * d ||
        p.ys.size() != n)
      bad("prompt " + str((int64_t)k), str(p.points) + "x" + str(p.dim),
          "write_icl_prompts needs w (dim), noise_var (points), xs (points·dim) and ys (points)");
    text += std::to_string(p.dim) + " " + std::to_string(p.points) + "\t";
    append_numbers(text, p.w.data(), d);
    text += '\t';
    append_numbers(text, p.noise_var.data(), n);
    text += '\t';
    append_numbers(text, p.xs.data(), n * d);
    text += '\t';
    append_numbers(text, p.ys.data(), n);
    text += '\n';
  }
  const std::string parent = std::filesystem::path(path).parent_path().string();
  if (!parent.empty()) detail::make_dirs(parent);
  lotgrad::write_file_atomic(path, text);  // core/io.h: temp file, fsync, rename
}

std::vector<IclPrompt> read_icl_prompts(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw std::invalid_argument(path + ": not found (write it with write_icl_prompts)");
  std::string text;
  try {
    text = detail::read_file(path);
  } catch (const IOError& e) {
    throw std::invalid_argument(e.what());
  }
  const std::vector<std::string> lines = detail::split_lines(text);
  const std::string magic = std::string(kIclMagic) + " prompts=";
  int64_t count = -1;
  if (lines.empty() || lines[0].rfind(magic, 0) != 0 || !detail::parse_int(lines[0].substr(magic.size()), count) ||
      count < 0)
    bad_file(path, 1, "the header must be '" + magic + "<count>'");
  std::vector<IclPrompt> out;
  out.reserve(lines.size() - 1);
  for (size_t li = 1; li < lines.size(); ++li) out.push_back(parse_prompt(path, (int64_t)li + 1, lines[li]));
  if ((int64_t)out.size() != count)
    bad_file(path, 1, "the header says prompts = " + str(count) + " but the file has " + str((int64_t)out.size()) +
                          " prompt lines");
  return out;
}

std::vector<double> least_squares_predictions(const IclPrompt& p) {
  return prefix_predictions(p, std::vector<double>((size_t)p.points, 0.0));
}

std::vector<double> least_squares_weights(const IclPrompt& p, int64_t k) {
  if (k < 0 || k > p.points) bad("k", str(k), "must be in 0..points = " + str(p.points));
  return fit(p, k, std::vector<double>((size_t)p.points, 0.0));
}

std::vector<double> ridge_predictions(const IclPrompt& p, double lambda) {
  if (!(lambda > 0.0) || !std::isfinite(lambda)) bad("lambda", str(lambda), "must be finite and > 0");
  return prefix_predictions(p, std::vector<double>((size_t)p.points, lambda));
}

std::vector<double> bayes_predictions(const IclPrompt& p, double w_std) {
  if (!(w_std > 0.0) || !std::isfinite(w_std)) bad("w_std", str(w_std), "must be finite and > 0");
  std::vector<double> r(p.noise_var);
  for (double& v : r) v /= w_std * w_std;
  return prefix_predictions(p, r);
}

std::vector<double> pgd_predictions(const IclPrompt& p, const std::vector<double>& omega, double c) {
  check_size("omega", omega, (size_t)p.points);
  std::vector<double> g((size_t)p.dim, 0.0), out((size_t)p.points, 0.0);  // g = Σ_{i<k} ω_i x_i y_i
  for (int64_t k = 0; k < p.points; ++k) {
    out[(size_t)k] = c * dot(p.x(k), g.data(), p.dim);
    for (int64_t a = 0; a < p.dim; ++a) g[(size_t)a] += omega[(size_t)k] * p.x(k)[a] * p.ys[(size_t)k];
  }
  return out;
}

double least_squares_risk(int64_t d, int64_t k, double noise_std) {
  if (noise_std == 0.0) return (double)std::max<int64_t>(d - k, 0);
  if (k <= d + 1) bad("k", str(k), "the noisy OLS risk needs k > d + 1 = " + str(d + 1));
  return noise_std * noise_std * (double)d / (double)(k - d - 1);
}

namespace {
// S1 = Σ ω_i and Q = Σ ω_i²(d + 1 + σ_i²).
std::pair<double, double> pgd_sums(int64_t d, const std::vector<double>& omega, const std::vector<double>& nv) {
  check_size("noise_var", nv, omega.size());
  double s1 = 0.0, q = 0.0;
  for (size_t i = 0; i < omega.size(); ++i) {
    s1 += omega[i];
    q += omega[i] * omega[i] * ((double)d + 1.0 + nv[i]);
  }
  return {s1, q};
}
}  // namespace

double pgd_best_scale(int64_t d, const std::vector<double>& omega, const std::vector<double>& nv) {
  const auto [s1, q] = pgd_sums(d, omega, nv);
  return s1 / (s1 * s1 + q);
}

double pgd_risk(int64_t d, const std::vector<double>& omega, const std::vector<double>& nv) {
  const auto [s1, q] = pgd_sums(d, omega, nv);
  return (double)d - (double)d * s1 * s1 / (s1 * s1 + q);
}

double linear_attention_risk(int64_t d, int64_t n, double noise_var) {
  const double a = (double)d + 1.0 + noise_var;
  return (double)d * a / ((double)n + a);
}

std::vector<double> h3_optimal_weights(int64_t d, const std::vector<double>& nv) {
  std::vector<double> w(nv.size());
  for (size_t i = 0; i < nv.size(); ++i) w[i] = 1.0 / ((double)d + 1.0 + nv[i]);
  return w;
}

double h3_optimal_risk(int64_t d, const std::vector<double>& nv) {
  double t = 0.0;
  for (double w : h3_optimal_weights(d, nv)) t += w;
  return (double)d / (1.0 + t);
}

}  // namespace lotgrad::data
