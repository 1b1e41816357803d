#include "causal_linear.h"

#include <algorithm>

#include "../core/autograd.h"
#include "../core/error.h"
#include "elementwise.h"
#include "matmul.h"
#include "shape.h"

namespace lotgrad {

Tensor causal_mask(int64_t n, DType dt) {
  std::vector<double> m((size_t)(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) m[(size_t)(i * n + j)] = 1.0;
  return Tensor::from_vector(m, {n, n}).to(dt);
}

namespace {

Tensor tr(const Tensor& x) { return x.transpose(-2, -1); }

// The chunks [start, start + len) of n positions.
std::vector<std::pair<int64_t, int64_t>> chunks(int64_t n, int64_t C) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t s = 0; s < n; s += C) out.push_back({s, std::min(C, n - s)});
  return out;
}

// Forward (no graph): Y_c = tril(Q_c K_cᵀ) V_c + Q_c S, then S += K_cᵀ V_c.
Tensor prefix_kernel(const Tensor& q, const Tensor& k, const Tensor& v, int64_t C) {
  NoGradGuard ng;
  Tensor S;  // (B, H, d, e), the past
  std::vector<Tensor> ys;
  for (auto [s, len] : chunks(q.size(2), C)) {
    const Tensor Qc = q.narrow(2, s, len), Kc = k.narrow(2, s, len), Vc = v.narrow(2, s, len);
    Tensor Yc = matmul(mul(matmul(Qc, tr(Kc)), causal_mask(len, q.dtype())), Vc);  // (B, H, len, e)
    if (S.defined()) Yc = add(Yc, matmul(Qc, S));
    ys.push_back(Yc);
    const Tensor kv = matmul(tr(Kc), Vc);  // (B, H, d, e)
    S = S.defined() ? add(S, kv) : kv;
  }
  return cat(ys, 2);
}

struct CausalLinearPrefixBackward : Node {
  SavedTensor q, k, v;
  int64_t chunk = 64;
  const char* name() const override { return "CausalLinearPrefixBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    const Tensor Q = q.unpack(this), K = k.unpack(this), V = v.unpack(this), G = g[0];
    const auto cs = chunks(Q.size(2), chunk);
    std::vector<Tensor> dq(cs.size()), dk(cs.size()), dv(cs.size());
    Tensor S;  // forward order: dQ_c = tril(G_c V_cᵀ) K_c + G_c Sᵀ
    for (size_t c = 0; c < cs.size(); ++c) {
      const auto [s, len] = cs[c];
      const Tensor Gc = G.narrow(2, s, len), Kc = K.narrow(2, s, len), Vc = V.narrow(2, s, len);
      dq[c] = matmul(mul(matmul(Gc, tr(Vc)), causal_mask(len, Q.dtype())), Kc);
      if (S.defined()) dq[c] = add(dq[c], matmul(Gc, tr(S)));
      const Tensor kv = matmul(tr(Kc), Vc);
      S = S.defined() ? add(S, kv) : kv;
    }
    Tensor M;  // reverse order: M = Σ_{later chunks} Q_iᵀ G_i (B, H, d, e)
    for (size_t c = cs.size(); c-- > 0;) {
      const auto [s, len] = cs[c];
      const Tensor Qc = Q.narrow(2, s, len), Kc = K.narrow(2, s, len), Vc = V.narrow(2, s, len), Gc = G.narrow(2, s, len);
      const Tensor mask = causal_mask(len, Q.dtype());
      dk[c] = matmul(tr(mul(matmul(Gc, tr(Vc)), mask)), Qc);  // local: Σ_{i>=j} (g_i·v_j) q_i
      dv[c] = matmul(tr(mul(matmul(Qc, tr(Kc)), mask)), Gc);  // local: Σ_{i>=j} (q_i·k_j) g_i
      if (M.defined()) {
        dk[c] = add(dk[c], matmul(Vc, tr(M)));
        dv[c] = add(dv[c], matmul(Kc, M));
      }
      const Tensor qg = matmul(tr(Qc), Gc);
      M = M.defined() ? add(M, qg) : qg;
    }
    return {needs_grad(0) ? cat(dq, 2) : Tensor(), needs_grad(1) ? cat(dk, 2) : Tensor(),
            needs_grad(2) ? cat(dv, 2) : Tensor()};
  }
  void release() override { q.reset(); k.reset(); v.reset(); }
};
}  // namespace

Tensor causal_linear_prefix(const Tensor& q, const Tensor& k, const Tensor& v, int64_t chunk) {
  if (q.dim() != 4 || k.shape() != q.shape() || v.dim() != 4 || v.size(0) != q.size(0) || v.size(1) != q.size(1) ||
      v.size(2) != q.size(2) || q.dtype() != k.dtype() || q.dtype() != v.dtype())
    throw_shape("causal_linear_prefix", "expects q, k (B, H, n, d) and v (B, H, n, e) of one dtype",
                {{"q", &q}, {"k", &k}, {"v", &v}});
  if (chunk < 1) throw std::invalid_argument("causal_linear_prefix: chunk must be >= 1, got " + std::to_string(chunk));
  Tensor out = prefix_kernel(q, k, v, chunk);
  if (auto n = make_node<CausalLinearPrefixBackward>({q, k, v})) {
    n->q = save(q);
    n->k = save(k);
    n->v = save(v);
    n->chunk = chunk;
    set_history(out, n);
  }
  return out;
}

}  // namespace lotgrad
