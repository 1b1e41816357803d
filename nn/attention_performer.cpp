// Performer, FAVOR+ (Choromanski et al. 2021): positive orthogonal random features
//   phi(x) = m^{-1/2} exp(W x̃ - |x̃|²/2),  x̃ = x d^{-1/4},
// then linear attention with phi(q), phi(k). W (m, d) stacks Q factors of Gaussian d×d
// matrices with rows rescaled by chi_d norms. Knobs ("features" m, "redraw", "feature_seed",
// "chunk"): see performer_mechanism() below.
//
// Stabilisation (see global_features): detached constants chosen so that they cancel EXACTLY
// between numerator and denominator, and so that every denominator is >= 1 whenever a batch
// row has a valid key. Hence no epsilon anywhere: an epsilon added inside phi (the old +1e-4)
// does not cancel against the stabilisers (the output then depends on them, and their
// gradient is dropped), and one added to the denominator (the old +1e-6) was as large as the
// stabilised sums, so rows summed to 0.4-0.7 (down to 0.05 for larger q, k) instead of 1.
// Only a batch row whose keys are all padded has a zero denominator; it is replaced by 1 (its
// outputs are then 0, finite).
//
// Causal (AttentionOptions::causal): out_i = Σ_{j<=i} phi(q_i)·phi(k_j) v_j / Σ_{j<=i} phi(q_i)·phi(k_j),
// by the chunked prefix op (ops/causal_linear.h) with a running (m, e + 1) state per head whose
// stabilisers change from chunk to chunk (see causal_forward and plan_chunks).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../ops/causal_linear.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "../ops/shape.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {
// (m, d) orthogonal random features, drawn in double then stored as f32.
Tensor orthogonal_features(int64_t m, int64_t d, Generator& gen) {
  std::vector<double> w((size_t)(m * d));
  for (int64_t row0 = 0; row0 < m; row0 += d) {
    // Gram-Schmidt on a Gaussian d×d block; rows are orthonormal.
    std::vector<double> blk((size_t)(d * d));
    for (auto& x : blk) x = gen.normal();
    for (int64_t i = 0; i < d; ++i) {
      double* ri = &blk[i * d];
      for (int64_t j = 0; j < i; ++j) {
        const double* rj = &blk[j * d];
        double dot = 0;
        for (int64_t t = 0; t < d; ++t) dot += ri[t] * rj[t];
        for (int64_t t = 0; t < d; ++t) ri[t] -= dot * rj[t];
      }
      double nrm = 0;
      for (int64_t t = 0; t < d; ++t) nrm += ri[t] * ri[t];
      nrm = std::sqrt(nrm);
      for (int64_t t = 0; t < d; ++t) ri[t] /= nrm;
    }
    for (int64_t i = 0; i < d && row0 + i < m; ++i) {
      double chi = 0;  // norm of a fresh Gaussian d-vector: keeps E[w wᵀ] = I
      for (int64_t t = 0; t < d; ++t) {
        const double g = gen.normal();
        chi += g * g;
      }
      chi = std::sqrt(chi);
      for (int64_t t = 0; t < d; ++t) w[(row0 + i) * d + t] = blk[i * d + t] * chi;
    }
  }
  return Tensor::from_vector(w, {m, d}).to(kFloat32);
}

// Largest rise of a stabiliser within one chunk of the causal form (see plan_chunks): every
// causal denominator is then >= e^{-30} ≈ 1e-13, a normal number in f32 and f64.
constexpr double kMaxRise = 30.0;

// num / den, with den = 0 (a row with no valid key: num = 0 too) replaced by 1.
Tensor safe_div(const Tensor& num, const Tensor& den) {
  Tensor none;
  {
    NoGradGuard ng;
    none = eq(den, 0.0);
  }
  return div(num, masked_fill(den, none, 1.0));
}

// The chunks of the causal form and their detached stabilisers.
struct ChunkPlan {
  std::vector<int64_t> lengths;
  Tensor row_ref;  // (B, H, n, m): tau_c[f] of the chunk c holding the row (0 where no valid key yet)
  Tensor decay;    // (B, H, n_chunks, m): exp(tau_{c-1}[f] - tau_c[f]) (0 while tau_{c-1}[f] = -inf)
};

// Greedy cut of n positions into chunks of at most max_len, shared by every batch row and head.
// Walks the causal running max T_i[f] = max over valid keys j <= i of lk[j, f] (-inf before the
// first valid key) and ends a chunk before row i when some (batch row, head, f) would have
// T_i[f] - T_first[f] > kMaxRise, T_first being T at the chunk's first row that has a valid
// key; a chunk of one row always fits (rise 0). lk (B·H, n, m), padded keys -inf. Returns each
// chunk's tau_c = T at its last row, (n_chunks, B·H, m).
template <class T>
std::vector<T> cut_chunks(const T* lk, int64_t BH, int64_t n, int64_t m, int64_t max_len, std::vector<int64_t>& lengths) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const size_t W = (size_t)(BH * m);
  std::vector<T> run(W, ninf), next(W), first(W, ninf), taus;  // run, next, first: (B·H, m)
  int64_t start = 0;
  auto close = [&](int64_t end) {
    lengths.push_back(end - start);
    taus.insert(taus.end(), run.begin(), run.end());
    start = end;
    std::fill(first.begin(), first.end(), ninf);
  };
  for (int64_t i = 0; i < n; ++i) {
    bool fits = i - start < max_len;
    for (int64_t bh = 0; bh < BH; ++bh)
      for (int64_t f = 0; f < m; ++f) {
        const size_t w = (size_t)(bh * m + f);
        next[w] = std::max(run[w], lk[(bh * n + i) * m + f]);
        if (first[w] != ninf && (double)next[w] - (double)first[w] > kMaxRise) fits = false;
      }
    if (!fits) close(i);
    for (size_t w = 0; w < W; ++w)
      if (first[w] == ninf) first[w] = next[w];
    run.swap(next);
  }
  if (n > 0) close(n);
  return taus;
}

// See cut_chunks. Plain numbers: nothing here is differentiated. lk (B, H, n, m), padded keys -inf.
ChunkPlan plan_chunks(const Tensor& lk_in, int64_t max_len) {
  const Tensor lk = lk_in.detach().contiguous();
  const int64_t B = lk.size(0), H = lk.size(1), n = lk.size(2), m = lk.size(3), BH = B * H;
  ChunkPlan plan;
  plan.row_ref = Tensor::empty(lk.shape(), lk.dtype());
  dispatch_float(lk.dtype(), "performer causal", [&]<class T>() {
    const std::vector<T> taus = cut_chunks(lk.data_ptr<T>(), BH, n, m, max_len, plan.lengths);
    const int64_t nc = (int64_t)plan.lengths.size();
    const T ninf = -std::numeric_limits<T>::infinity();
    auto tau = [&](int64_t c, int64_t bh, int64_t f) { return taus[(size_t)((c * BH + bh) * m + f)]; };
    std::vector<int64_t> chunk_of;  // (n,)
    for (int64_t c = 0; c < nc; ++c) chunk_of.insert(chunk_of.end(), (size_t)plan.lengths[(size_t)c], c);
    T* ref = plan.row_ref.data_ptr<T>();
    std::vector<T> decay((size_t)(BH * nc * m));
    for (int64_t bh = 0; bh < BH; ++bh) {
      for (int64_t i = 0; i < n; ++i)  // -inf -> 0: no valid key yet, every pk there is 0 anyway
        for (int64_t f = 0; f < m; ++f) {
          const T t = tau(chunk_of[(size_t)i], bh, f);
          ref[(bh * n + i) * m + f] = t == ninf ? T(0) : t;
        }
      for (int64_t c = 0; c < nc; ++c)  // a past of -inf (no valid key): an empty state, decay 0
        for (int64_t f = 0; f < m; ++f) {
          const T prev = c > 0 ? tau(c - 1, bh, f) : ninf;
          decay[(size_t)((bh * nc + c) * m + f)] = prev == ninf ? T(0) : (T)std::exp((double)prev - (double)tau(c, bh, f));
        }
    }
    plan.decay = Tensor::from_vector(decay, {B, H, nc, m});
  });
  return plan;
}

class PerformerAttention : public AttentionMechanism {
 public:
  PerformerAttention(const AttentionOptions& opt, Generator& gen) {
    m_ = (int64_t)opt.get("features");
    d_ = opt.d_head;
    redraw_ = (int64_t)opt.get("redraw");
    causal_ = opt.causal;
    chunk_ = (int64_t)opt.get("chunk");
    gen_ = Generator(opt.has("feature_seed") ? (uint64_t)opt.get("feature_seed") : (uint64_t)gen.randint(0, INT64_MAX));
    features = orthogonal_features(m_, d_, gen_);
    register_buffer("features", &features);
  }
  std::string type_name() const override {
    return "PerformerAttention(m=" + std::to_string(m_) + (causal_ ? ", causal)" : ")");
  }

  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    maybe_redraw();
    Tensor lq, lk;
    log_features(q, k, mask, lq, lk);
    if (causal_) return causal_forward(lq, lk, v);
    Tensor pq, pk;
    global_features(lq, lk, pq, pk);
    Tensor kv = matmul(pk.transpose(-2, -1), v);                 // (B, H, m, dv)
    Tensor z = sum(pk, {-2}, true);                               // (B, H, 1, m)
    Tensor den = sum(mul(pq, z), {-1}, true);                     // (B, H, n, 1), >= 1 or 0
    return safe_div(matmul(pq, kv), den);
  }
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    if (causal_) return causal_matrix(q, k, mask);
    Tensor lq, lk, pq, pk;
    log_features(q, k, mask, lq, lk);
    global_features(lq, lk, pq, pk);
    Tensor s = matmul(pq, pk.transpose(-2, -1));  // (B, H, n, n)
    return safe_div(s, sum(s, {-1}, true));        // den >= 1, or 0 where every key is padded
  }
  Tensor features;  // buffer (m, d)

 private:
  // q, k (B, H, n, d) -> the log-features lq, lk (B, H, n, m): W x̃ - |x̃|²/2 (the m^{-1/2} is
  // dropped: it cancels). Padded keys' log-features are -inf when a mask is given: exactly zero
  // weight after exp, and their content (however large) cannot reach a valid output.
  void log_features(const Tensor& q, const Tensor& k, const Tensor& mask, Tensor& lq, Tensor& lk) const {
    const double scale = std::pow((double)q.size(-1), -0.25);
    Tensor w = features.to(q.dtype()).t();
    auto logf = [&](const Tensor& x) {
      Tensor xs = mul(x, scale);
      return sub(matmul(xs, w), mul(sum(mul(xs, xs), {-1}, true), 0.5));  // (B, H, n, m)
    };
    lq = logf(q);
    lk = logf(k);
    if (mask.defined()) lk = masked_fill(lk, mask.unsqueeze(1).unsqueeze(-1), -INFINITY);
  }
  // lq, lk -> pq, pk (B, H, n, m), the FAVOR+ features up to detached factors that cancel in
  // every ratio pq·Σ_j pk_j v_j / pq·Σ_j pk_j:
  //   pk[j, f] = exp(lk[j, f] - t[f]),           t[f] = max over valid keys j of lk[j, f]
  //   pq[i, f] = exp(lq[i, f] + t[f] - s[i]),    s[i] = max over f of lq[i, f] + t[f]
  // so pq[i, f] pk[j, f] = exp(lq[i, f] + lk[j, f] - s[i]): t cancels inside every product and
  // s[i] (like m^{-1/2}, dropped) is one factor per query row, common to numerator and
  // denominator. The output is thus exactly independent of t and s, so treating them as
  // constants gives the exact gradient. Nothing overflows (every exponent is <= 0) and nothing
  // underflows to a zero denominator: the argmax feature f* of row i has pq[i, f*] = 1 and
  // Σ_j pk[j, f*] >= 1, so the denominator is >= 1. A row with every key padded gets t = 0 and
  // pk = 0 (denominator 0: the callers divide by 1 there instead).
  // Not for the causal form: there the keys j <= i may all lie far below t (set by a later key),
  // and the prefix sums underflow to 0/0.
  static void global_features(const Tensor& lq, const Tensor& lk, Tensor& pq, Tensor& pk) {
    Tensor t;
    {
      NoGradGuard ng;  // detached stabiliser
      t = max(lk, -2, true).values;                   // (B, H, 1, m)
      t = masked_fill(t, eq(t, -INFINITY), 0.0);      // every key padded: max is -inf
    }
    pk = exp(sub(lk, t));
    Tensor a = add(lq, t);
    Tensor s;
    {
      NoGradGuard ng;  // detached stabiliser
      s = max(a, -1, true).values;  // (B, H, n, 1)
    }
    pq = exp(sub(a, s));
  }
  // The causal form. Rows and keys of chunk c share its stabiliser tau_c (plan_chunks: the
  // causal running max of lk at the chunk's last row):
  //   pk[j, f] = exp(lk[j, f] - tau_c[f]),   pq[i, f] = exp(lq[i, f] + tau_c[f] - s[i]),
  //   s[i] = max over f of lq[i, f] + tau_c[f],
  // and the state of the earlier chunks, kept relative to tau_{c-1}, is scaled by the decay
  // exp(tau_{c-1}[f] - tau_c[f]) as chunk c begins (as online softmax rescales its running sum).
  // Exact: pq[i, f] · (decays) · pk[j, f] = exp(lq[i, f] + lk[j, f] - s[i]) for every j <= i:
  //   the taus cancel, and s[i] is one factor per row, common to numerator and denominator. The
  //   output does not depend on these detached constants, so dropping their gradient is exact.
  // No overflow: tau_c[f] >= lk[j, f] for every key up to the chunk's end and
  //   s[i] >= lq[i, f] + tau_c[f], so every factor and every decay is <= 1.
  // No 0/0: take a row i with a valid key j <= i, T_i the running max at i, f* the argmax of
  //   lq[i, f] + T_i[f] (the value sigma_i) and j* <= i the key with lk[j*, f*] = T_i[f*]. The
  //   cuts keep tau_c[f] - T_i[f] <= kMaxRise, so s[i] - sigma_i <= kMaxRise, and the term of
  //   (j*, f*) is exp(sigma_i - s[i]) >= e^{-kMaxRise}, each of its factors too: pq[i, f*] >=
  //   exp(sigma_i - s[i]); then pk[j*, f*] = exp(T_i[f*] - tau_c[f*]) if j* is in chunk c, else
  //   the state holds j*'s exact 1 (no key before i exceeds lk[j*, f*], so every decay between
  //   is exp(0)) times the decay exp(T_i[f*] - tau_c[f*]). All terms are >= 0, so every such
  //   denominator is >= e^{-30} ≈ 1e-13 (a normal f32); what underflows is < 1e-38, negligible.
  // The global t of the non-causal form has no such bound: a short key late in the sequence sets
  // t[f] far above what an early row's few long keys reach, and that row's sums underflow to 0/0.
  Tensor causal_forward(const Tensor& lq, const Tensor& lk, const Tensor& v) const {
    const ChunkPlan plan = plan_chunks(lk, chunk_);
    Tensor pk = exp(sub(lk, plan.row_ref));  // (B, H, n, m), 0 at padded keys
    Tensor a = add(lq, plan.row_ref);
    Tensor s;
    {
      NoGradGuard ng;  // detached stabiliser
      s = max(a, -1, true).values;  // (B, H, n, 1)
    }
    Tensor pq = exp(sub(a, s));  // (B, H, n, m)
    // the prefix product of [v | 1]: its last column is the denominator
    const int64_t e = v.size(-1);
    Shape ones_shape = v.shape();
    ones_shape.back() = 1;
    const Tensor Y = causal_linear_prefix(pq, pk, cat({v, Tensor::ones(ones_shape, v.dtype())}, -1), plan.lengths,
                                          plan.decay);  // (B, H, n, e + 1)
    return safe_div(Y.narrow(-1, 0, e), Y.narrow(-1, e, 1));
  }
  // The causal map in the log domain, independently of causal_forward: the scores
  // L[i, j] = log Σ_f exp(lq[i, f] + lk[j, f]) (B, H, n, n), -inf where j > i or key j is
  // padded, normalised per row against a detached row max: exact at any scale of q and k. Goes
  // through a (B, H, n, n, m) tensor: for study at small n only.
  Tensor causal_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) const {
    Tensor lq, lk;
    log_features(q, k, Tensor(), lq, lk);  // padded keys stay finite here (a -inf would give NaN gradients)
    Tensor L = logsumexp(add(lq.unsqueeze(3), lk.unsqueeze(2)), {-1});  // (B, H, n, n)
    L = masked_fill(L, eq(causal_mask(L.size(-1), L.dtype()), 0.0), -INFINITY);
    if (mask.defined()) L = masked_fill(L, mask.unsqueeze(1).unsqueeze(1), -INFINITY);
    Tensor mx;
    {
      NoGradGuard ng;  // detached stabiliser; a row without valid keys: -inf -> 0
      mx = max(L, -1, true).values;
      mx = masked_fill(mx, eq(mx, -INFINITY), 0.0);
    }
    Tensor s = exp(sub(L, mx));
    return safe_div(s, sum(s, {-1}, true));
  }
  void maybe_redraw() {
    if (!is_training() || redraw_ <= 0) return;
    if (calls_ > 0 && calls_ % redraw_ == 0) features = orthogonal_features(m_, d_, gen_);
    ++calls_;
  }
  int64_t m_, d_, redraw_ = 0, calls_ = 0, chunk_ = 64;
  bool causal_ = false;
  Generator gen_;
};
}  // namespace

MechanismSpec performer_mechanism() {
  MechanismSpec s;
  s.name = "performer";
  s.summary = "FAVOR+ positive orthogonal random features (Choromanski et al. 2021); O(n·m·d)";
  s.knobs = {{.name = "features", .type = KnobType::integer, .def = 128, .lo = 1, .hi = 65536, .help = "random features m"},
             {.name = "redraw", .type = KnobType::integer, .def = 0, .lo = 0, .hi = 1e9,
              .help = "draw new features every N training calls (0: never)"},
             {.name = "feature_seed", .type = KnobType::integer, .lo = 0, .hi = kMaxSeed,
              .help = "seed of the random features (absent: drawn from the model's generator)", .optional = true},
             {.name = "chunk", .type = KnobType::integer, .def = 64, .lo = 1, .hi = 65536,
              .help = "causal: most positions per chunk of the prefix form (cut shorter where a stabiliser rises fast)"}};
  s.presets["tiny"] = {{"features", 16}, {"chunk", 3}};
  s.caps = {.causal = true, .linear_time = true};
  s.make = [](const AttentionOptions& o, Generator& g) { return std::make_shared<PerformerAttention>(o, g); };
  return s;
}

}  // namespace lotgrad::nn
