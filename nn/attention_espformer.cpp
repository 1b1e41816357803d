// ESPFormer (Shahbazi et al. 2025): attention as an expected sliced transport plan. Per head,
// with q̂ = q/√d and k̂ = k/√d (n valid tokens, d = head dimension):
//   slices: the d coordinate axes; slice l has values x = q̂[:, l] (queries), y = k̂[:, l] (keys)
//   soft sort: P_x[ρ, i] = softmax_i(−(x_i − x_(ρ))² / τ), x_(ρ) the ρ-th largest   (n, n)
//   slice plan: Γ_l = P_xᵀ P_y / n   — a coupling of the uniform measures (mass 1), matching
//               query and key tokens of equal rank
//   slice weights: w = softmax_l(−T · ⟨C, Γ_l⟩), C_ij = ‖q̂_i − k̂_j‖₂ (not squared)
//   A = Σ_l w_l Γ_l,  output = n · A · v   (rows of n·A sum to about 1)
// Only approximately doubly stochastic: each soft-sort row (one rank) sums to 1 exactly, but
// its columns (one token) only approximately, so neither the row nor the column sums of n·A
// are exact; both are near 1 when the slice values are well separated relative to √τ.
//
// The sort itself is hard: the ranks are an argsort of the data (no gradient), the sorted
// values x_(ρ) are a gather of x, so gradients reach them. Ties are broken by token index.
//
// Scale convention: Γ_l here has mass 1, the reference code's P_xᵀ P_y has mass n, so its
// ⟨C, Γ_l⟩ is n times ours; T here equals the reference's T·n (ours does not depend on n).
//
// Cost: O(d n²) memory and O(d n³) time per head (Γ_l is formed for ⟨C, Γ_l⟩). A quadratic
// baseline, for study at moderate n.
//
// Padding: each batch row runs on its valid tokens only (index_select), so pads get zero
// weight and their content cannot reach valid outputs; n is the number of valid tokens. The
// result is put back with a 0/1 placement matrix; rows of padded queries are zero.
//
// Knobs: tau (soft-sort temperature, 1e-3 as the reference), T (inverse temperature of the
// slice weights, 10; 0 gives the plain mean over slices).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "../ops/shape.h"
#include "../ops/softmax.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {

// (..., d, L) slice values -> int64 (..., d, L) indices sorting each row in descending order
// (ties by index). Computed on the data: the ranks carry no gradient.
Tensor argsort_desc(const Tensor& x) {
  const int64_t L = x.size(-1);
  std::vector<double> vals = x.detach().to_vector();
  const int64_t rows = L ? (int64_t)vals.size() / L : 0;
  std::vector<int64_t> idx((size_t)(rows * L));
  std::vector<int64_t> perm((size_t)L);
  for (int64_t r = 0; r < rows; ++r) {
    const double* v = vals.data() + r * L;
    std::iota(perm.begin(), perm.end(), int64_t{0});
    std::stable_sort(perm.begin(), perm.end(), [v](int64_t a, int64_t b) { return v[a] > v[b]; });
    std::copy(perm.begin(), perm.end(), idx.begin() + r * L);
  }
  return Tensor::from_vector(idx, x.shape());
}

// Soft sort of each row of x (..., d, L): (..., d, L rank, L token).
Tensor soft_sort(const Tensor& x, double tau) {
  Tensor sorted = gather(x, -1, argsort_desc(x));                  // (..., d, L) descending
  Tensor diff = sub(x.unsqueeze(-2), sorted.unsqueeze(-1));        // (..., d, L, L)
  return softmax(mul(mul(diff, diff), -1.0 / tau), -1);
}

// 0/1 (n, L) matrix E with E[valid[t], t] = 1: E·X puts L rows back at their positions.
Tensor placement(const std::vector<int64_t>& valid, int64_t n, DType dt) {
  const int64_t L = (int64_t)valid.size();
  std::vector<double> e((size_t)(n * L), 0.0);
  for (int64_t t = 0; t < L; ++t) e[valid[t] * L + t] = 1.0;
  return Tensor::from_vector(e, {n, L}).to(dt);
}

class ESPAttention : public AttentionMechanism {
 public:
  explicit ESPAttention(const AttentionOptions& opt) : tau_(opt.get("tau")), T_(opt.get("T")) {}
  std::string type_name() const override {
    return "ESPAttention(tau=" + std::to_string(tau_) + ", T=" + std::to_string(T_) + ")";
  }

  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    check(q, k, &v, mask, "forward");
    return per_row(q, k, mask, [&](const Tensor& qb, const Tensor& kb, int64_t b, const Tensor& idx) {
      Tensor vb = b < 0 ? v : v.narrow(0, b, 1);  // b < 0: the whole batch
      if (idx.defined()) vb = index_select(vb, 2, idx);
      return matmul(mul(plan(qb, kb), (double)qb.size(2)), vb);  // (b, H, L, dv)
    }, v.size(-1), false);
  }
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    check(q, k, nullptr, mask, "attention_matrix");
    return per_row(q, k, mask, [&](const Tensor& qb, const Tensor& kb, int64_t, const Tensor&) {
      return mul(plan(qb, kb), (double)qb.size(2));  // (b, H, L, L)
    }, 0, true);
  }

 private:
  void check(const Tensor& q, const Tensor& k, const Tensor* v, const Tensor& mask, const char* what) const {
    const std::string op = std::string("espformer ") + what;
    if (q.dim() != 4 || k.shape() != q.shape() || (v && (v->dim() != 4 || v->size(0) != q.size(0) ||
                                                          v->size(1) != q.size(1) || v->size(2) != q.size(2))))
      throw_shape(op, "q and k must be (B, H, n, d) of one shape, v (B, H, n, dv)",
                  {{"q", &q}, {"k", &k}, {"v", v ? v : &q}});
    if (mask.defined() && (mask.dtype() != kBool || mask.dim() != 2 || mask.size(0) != q.size(0) || mask.size(1) != q.size(2)))
      throw_shape(op, "key_padding_mask must be bool (B, n)", {{"q", &q}, {"mask", &mask}});
  }

  // The plan A = Σ_l w_l Γ_l (mass 1) for (b, H, L, d) queries and keys: (b, H, L, L).
  Tensor plan(const Tensor& q, const Tensor& k) const {
    const double s = 1.0 / std::sqrt((double)q.size(-1));
    const double L = (double)q.size(2);
    Tensor qh = mul(q, s), kh = mul(k, s);                                 // (b, H, L, d)
    Tensor Px = soft_sort(qh.transpose(-2, -1), tau_);                    // (b, H, d, L, L)
    Tensor Py = soft_sort(kh.transpose(-2, -1), tau_);
    Tensor G = mul(matmul(Px.transpose(-2, -1), Py), 1.0 / L);            // (b, H, d, L, L)
    // C_ij = ‖q̂_i − k̂_j‖ from the differences (exact; no cancellation); the 1e-30 keeps the
    // square root's gradient finite at coincident points.
    Tensor diff = sub(qh.unsqueeze(3), kh.unsqueeze(2));                  // (b, H, L, L, d)
    Tensor C = sqrt(add(sum(mul(diff, diff), {-1}), 1e-30));              // (b, H, L, L)
    Tensor cost = sum(mul(G, C.unsqueeze(2)), {-2, -1});                  // (b, H, d)
    Tensor w = softmax(mul(cost, -T_), -1);                               // (b, H, d)
    return sum(mul(G, w.unsqueeze(-1).unsqueeze(-1)), {2});               // (b, H, L, L)
  }

  // Runs f on each batch row's valid tokens (or on the whole batch without a mask) and puts
  // the (1, H, L, m) results back into (B, H, n, m) (m = cols, or n when square).
  template <class F>
  Tensor per_row(const Tensor& q, const Tensor& k, const Tensor& mask, F f, int64_t cols, bool square) const {
    const int64_t B = q.size(0), H = q.size(1), n = q.size(2);
    if (!mask.defined()) return f(q, k, -1, Tensor());
    std::vector<Tensor> rows;
    const auto pos = valid_positions(mask, B, n);
    for (int64_t b = 0; b < B; ++b) {
      const std::vector<int64_t>& valid = pos[b];
      const int64_t L = (int64_t)valid.size();
      Tensor qb = q.narrow(0, b, 1), kb = k.narrow(0, b, 1);
      if (L == n) {
        rows.push_back(f(qb, kb, b, Tensor()));
        continue;
      }
      if (L == 0) {  // nothing to attend to: zeros (still connected to q for a defined graph)
        rows.push_back(mul(Tensor::zeros({1, H, n, square ? n : cols}, q.dtype()), 1.0));
        continue;
      }
      Tensor idx = Tensor::from_vector(valid, {L});
      Tensor qv = index_select(qb, 2, idx), kv = index_select(kb, 2, idx);
      Tensor r = f(qv, kv, b, idx);                        // (1, H, L, m)
      Tensor E = placement(valid, n, q.dtype());           // (n, L)
      r = matmul(E, r);                                    // (1, H, n, m)
      if (square) r = matmul(r, E.t());                    // (1, H, n, n)
      rows.push_back(r);
    }
    return cat(rows, 0);
  }

  double tau_, T_;
};

}  // namespace

MechanismSpec espformer_mechanism() {
  MechanismSpec s;
  s.name = "espformer";
  s.summary = "expected sliced transport plans over the d coordinate slices (Shahbazi et al. 2025); O(d·n²)";
  s.knobs = {{.name = "tau", .type = KnobType::real, .def = 1e-3, .lo = 1e-9, .hi = 1e6, .help = "soft-sort temperature"},
             {.name = "T", .type = KnobType::real, .def = 10, .lo = 0, .hi = 1e6,
              .help = "inverse temperature of the slice weights (0: the plain mean over slices)"}};
  s.presets["tiny"] = {};
  s.caps = {.causal = false, .why_not_causal = "a lower-triangular doubly-stochastic matrix is the identity"};
  s.make = [](const AttentionOptions& o, Generator&) { return std::make_shared<ESPAttention>(o); };
  return s;
}

}  // namespace lotgrad::nn
