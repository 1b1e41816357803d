// In-context linear regression prompts (Garg et al., arXiv 2208.01066; Li, Rawat & Oymak,
// arXiv 2407.10005) and the closed-form predictors and risks that models are compared to.
//
// Generator (dtsip/in-context-learning `src/tasks.py`, `src/samplers.py`, LinearRegression):
//   per prompt  w ~ N(0, w_std² I_d)                  (Garg: w_std = 1)
//   per point   x_i ~ N(0, x_std² I_d), coordinates >= active_dims set to 0 (the curriculum's
//               inactive dimensions)                  (Garg: x_std = 1; Kuang et al.,
//               arXiv 2509.07963: x_std = 1/sqrt(d), so Var(y) ≈ 1)
//               y_i = w·x_i + ξ_i, ξ_i ~ N(0, σ_i²)   (Garg: σ = 0)
//   σ_i = point_noise_std[i] when that list is given (heterogeneous design), else noise_std.
// Layout (Garg): the prompt is 2n tokens of width d,
//   tokens (2n, d): row 2i = x_i, row 2i + 1 = [y_i, 0, ..., 0]
// and the prediction for y_i is read at row 2i (it sees pairs < i). Loss: squared error over
// all n read-outs; Garg reports squared error / d (1 = the zero predictor at x_std = w_std = 1).
// Garg's final setting: d = 20, n = 41 (curriculum d 5 -> 20, n 11 -> 41).
// Prompt i is a pure function of (seed, i).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../core/tensor.h"

namespace lotgrad::data {

struct IclRegressionOptions {
  int64_t dim = 20;          // d
  int64_t points = 41;       // n pairs per prompt
  int64_t active_dims = 0;   // 0 = all d; else x coordinates >= active_dims are 0
  double x_std = 1.0;
  double w_std = 1.0;
  double noise_std = 0.0;                // σ for every point ...
  std::vector<double> point_noise_std;   // ... or σ_i per point (size n) when non-empty
  uint64_t seed = 0;
};

struct IclPrompt {
  int64_t dim = 0, points = 0;
  std::vector<double> xs;         // (n, d) row-major
  std::vector<double> ys;         // (n)
  std::vector<double> w;          // (d)
  std::vector<double> noise_var;  // (n) σ_i², as drawn with
  const double* x(int64_t i) const { return xs.data() + i * dim; }
};

// Throws std::invalid_argument naming the option and its value.
void validate(const IclRegressionOptions& opt);
IclPrompt icl_prompt(const IclRegressionOptions& opt, int64_t index);
std::vector<IclPrompt> generate_icl_regression(int64_t count, const IclRegressionOptions& opt, int64_t first = 0);

struct IclBatch {
  Tensor tokens;   // (B, 2n, d) f32, Garg's interleaved layout
  Tensor targets;  // (B, n) f32: y_i, predicted at token row 2i
};
IclBatch icl_batch(const std::vector<IclPrompt>& prompts, const std::vector<int64_t>& indices);

// The prompt a curriculum step sees (Garg: dims 5 -> 20, points 11 -> 41): the first `points`
// pairs, with x coordinates >= active_dims set to 0 (0 = keep all) and each y_i recomputed as
// w·x_i + ξ_i with the prompt's own w and noise draw ξ_i = y_i - w·x_i (y is kept as is where no
// coordinate changes; noiseless prompts get y_i = w·x_i exactly). Distributed as a fresh prompt
// generated with those options. Throws naming points or active_dims when outside 1..p.points
// or 0..p.dim.
IclPrompt restrict_prompt(const IclPrompt& p, int64_t points, int64_t active_dims = 0);
// icl_batch of the restricted prompts: tokens (B, 2·points, d), targets (B, points).
IclBatch icl_batch(const std::vector<IclPrompt>& prompts, const std::vector<int64_t>& indices, int64_t points,
                   int64_t active_dims = 0);

// The heterogeneous design that separates H3 from linear attention (Li, Rawat & Oymak,
// arXiv 2407.10005): per-point noise std for IclRegressionOptions::point_noise_std, 0 for
// positions i < points/2 and `sigma` for the rest (with odd `points` the middle one is noisy).
std::vector<double> heterogeneous_noise(int64_t points, double sigma = 10.0);

// ---- Files. Text, line 1 the header "lotgrad-icl-prompts v1 prompts=<count>", then one prompt
// per line, five tab-separated fields:
//   dim points <TAB> w (dim) <TAB> noise_var (points) <TAB> xs (points·dim, row-major) <TAB> ys (points)
// each a space-separated list of numbers in the shortest form that reads back to the same
// double (std::to_chars), so a round trip is bit-exact. Written to a temporary name and renamed.
void write_icl_prompts(const std::string& path, const std::vector<IclPrompt>& prompts);
// Throws std::invalid_argument naming the file and line: missing file, bad header, wrong field
// or number count, a non-number or non-finite value, a negative noise variance, a count unlike
// the header's.
std::vector<IclPrompt> read_icl_prompts(const std::string& path);

// ---- Closed-form predictors. Each returns (n) predictions: entry k predicts y_k at x_k from
// pairs 0..k-1 only (0 for k = 0), i.e. what a causal model outputs at token row 2k.
//
// Minimum-norm least squares: ŵ = X⁺y (the interpolant of smallest norm while k < d).
std::vector<double> least_squares_predictions(const IclPrompt& p);
// The minimum-norm least-squares ŵ (d) from the first k pairs (all zeros for k = 0).
std::vector<double> least_squares_weights(const IclPrompt& p, int64_t k);
// Ridge: ŵ = (XᵀX + λI)⁻¹Xᵀy, λ > 0.
std::vector<double> ridge_predictions(const IclPrompt& p, double lambda);
// Bayes-optimal (posterior mean of w under the generator's prior w ~ N(0, w_std² I) and the
// prompt's noise variances): ŵ = w_std² Xᵀ(w_std² XXᵀ + diag(σ_i²))⁺ y. With equal σ this is
// ridge with λ = σ²/w_std²; noiseless, it is minimum-norm least squares.
std::vector<double> bayes_predictions(const IclPrompt& p, double w_std);
// One step of (weighted) preconditioned gradient descent from 0, the predictor a 1-layer
// linear attention (omega ≡ 1) or H3 (omega = its filter) implements (Li, Rawat & Oymak):
//   ŷ_k = c · x_kᵀ Σ_{i<k} omega_i x_i y_i.  omega: (n) weights.
std::vector<double> pgd_predictions(const IclPrompt& p, const std::vector<double>& omega, double c);

// ---- Closed-form risks, for x_std = w_std = 1 (Gaussian design, w ~ N(0, I_d)).
// Expected squared error E(y_query - ŷ)² of min-norm least squares from k examples, noiseless
// query label: max(d - k, 0) without noise (Garg's baseline; divide by d to normalise); with
// noise σ > 0 the OLS excess error σ²·d/(k - d - 1), defined for k > d + 1 only (throws
// otherwise, naming k).
double least_squares_risk(int64_t d, int64_t k, double noise_std);
// Weighted 1-step PGD at its best scale c = S1/(S1² + Q), S1 = Σ ω_i, Q = Σ ω_i²(d + 1 + σ_i²):
//   R(ω) = d - d·S1²/(S1² + Q)   (risk E(xᵀw - ŷ)², noiseless query label)
double pgd_best_scale(int64_t d, const std::vector<double>& omega, const std::vector<double>& noise_var);
double pgd_risk(int64_t d, const std::vector<double>& omega, const std::vector<double>& noise_var);
// Linear attention (ω ≡ 1, n points of noise σ²): c* = 1/(n + d + 1 + σ²),
// R_LA = d(d + 1 + σ²)/(n + d + 1 + σ²).
double linear_attention_risk(int64_t d, int64_t n, double noise_var);
// Best weights ω_i ∝ 1/(d + 1 + σ_i²) (the optimal H3 filter): R_H3* = d/(1 + Σ 1/(d + 1 + σ_i²)).
std::vector<double> h3_optimal_weights(int64_t d, const std::vector<double>& noise_var);
double h3_optimal_risk(int64_t d, const std::vector<double>& noise_var);

}  // namespace lotgrad::data
