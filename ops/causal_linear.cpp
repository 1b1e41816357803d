#include "causal_linear.h"

#include <algorithm>
#include <map>

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

using Chunks = std::vector<std::pair<int64_t, int64_t>>;  // [start, start + len)

// The chunks [start, start + len) of n positions.
Chunks even_chunks(int64_t n, int64_t C) {
  Chunks out;
  for (int64_t s = 0; s < n; s += C) out.push_back({s, std::min(C, n - s)});
  return out;
}

// causal_mask(len, dt), built once per length: chunks mostly share one.
struct MaskCache {
  DType dt;
  std::map<int64_t, Tensor> by_len;
  const Tensor& operator()(int64_t len) {
    Tensor& m = by_len[len];
    if (!m.defined()) m = causal_mask(len, dt);
    return m;
  }
};

// g_c as (B, H, d, 1): scales the rows of a (B, H, d, e) state.
Tensor decay_of(const Tensor& decay, size_t c) { return tr(decay.narrow(2, (int64_t)c, 1)); }

// The past as chunk c sees it: g_c ⊙ S (S undefined: no past yet).
Tensor decayed(const Tensor& S, const Tensor& decay, size_t c) {
  if (!S.defined() || !decay.defined()) return S;
  return mul(S, decay_of(decay, c));
}

// Forward (no graph): Y_c = tril(Q_c K_cᵀ) V_c + Q_c (g_c ⊙ S), then S = g_c ⊙ S + K_cᵀ V_c.
Tensor prefix_kernel(const Tensor& q, const Tensor& k, const Tensor& v, const Chunks& cs, const Tensor& decay) {
  NoGradGuard ng;
  Tensor S;  // (B, H, d, e), the past
  // Each chunk's rows are copied into the output as they are made: holding every chunk until
  // one cat at the end kept n/C small blocks alive, fresh heap pages each call.
  Tensor out = make_tensor_uninit(v.shape(), v.dtype());  // (B, H, n, e), every row written below
  MaskCache mask{q.dtype(), {}};
  for (size_t c = 0; c < cs.size(); ++c) {
    const auto [s, len] = cs[c];
    const Tensor Qc = q.narrow(2, s, len), Kc = k.narrow(2, s, len), Vc = v.narrow(2, s, len);
    Tensor Yc = matmul(mul(matmul(Qc, tr(Kc)), mask(len)), Vc);  // (B, H, len, e)
    S = decayed(S, decay, c);
    if (S.defined()) Yc = add(Yc, matmul(Qc, S));
    out.narrow(2, s, len).copy_(Yc);
    const Tensor kv = matmul(tr(Kc), Vc);  // (B, H, d, e)
    S = S.defined() ? add(S, kv) : kv;
  }
  return out;
}

struct CausalLinearPrefixBackward : Node {
  SavedTensor q, k, v, decay;
  Chunks cs;
  const char* name() const override { return "CausalLinearPrefixBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    const Tensor Q = q.unpack(this), K = k.unpack(this), V = v.unpack(this), G = g[0];
    const Tensor D = decay.defined() ? decay.unpack(this) : Tensor();
    // Chunk results go straight into the gradients (no n/C pieces held for a cat).
    Tensor dQ = make_tensor_uninit(Q.shape(), Q.dtype()), dK = make_tensor_uninit(K.shape(), K.dtype()),
           dV = make_tensor_uninit(V.shape(), V.dtype());
    MaskCache masks{Q.dtype(), {}};
    Tensor S;  // forward order: dQ_c = tril(G_c V_cᵀ) K_c + G_c (g_c ⊙ S)ᵀ
    for (size_t c = 0; c < cs.size(); ++c) {
      const auto [s, len] = cs[c];
      const Tensor Gc = G.narrow(2, s, len), Kc = K.narrow(2, s, len), Vc = V.narrow(2, s, len);
      Tensor dq = matmul(mul(matmul(Gc, tr(Vc)), masks(len)), Kc);
      S = decayed(S, D, c);
      if (S.defined()) dq = add(dq, matmul(Gc, tr(S)));
      dQ.narrow(2, s, len).copy_(dq);
      const Tensor kv = matmul(tr(Kc), Vc);
      S = S.defined() ? add(S, kv) : kv;
    }
    // reverse order: M = d loss / d S_c (B, H, d, e); the state before chunk c gets
    // g_c ⊙ (Q_cᵀ G_c + M), which is the M of chunk c - 1.
    Tensor M;
    for (size_t c = cs.size(); c-- > 0;) {
      const auto [s, len] = cs[c];
      const Tensor Qc = Q.narrow(2, s, len), Kc = K.narrow(2, s, len), Vc = V.narrow(2, s, len), Gc = G.narrow(2, s, len);
      const Tensor& mask = masks(len);
      Tensor dk = matmul(tr(mul(matmul(Gc, tr(Vc)), mask)), Qc);  // local: Σ_{i>=j} (g_i·v_j) q_i
      Tensor dv = matmul(tr(mul(matmul(Qc, tr(Kc)), mask)), Gc);  // local: Σ_{i>=j} (q_i·k_j) g_i
      if (M.defined()) {
        dk = add(dk, matmul(Vc, tr(M)));
        dv = add(dv, matmul(Kc, M));
      }
      dK.narrow(2, s, len).copy_(dk);
      dV.narrow(2, s, len).copy_(dv);
      if (c == 0) break;
      const Tensor qg = matmul(tr(Qc), Gc);
      M = decayed(M.defined() ? add(M, qg) : qg, D, c);
    }
    return {needs_grad(0) ? dQ : Tensor(), needs_grad(1) ? dK : Tensor(), needs_grad(2) ? dV : Tensor()};
  }
  void release() override { q.reset(); k.reset(); v.reset(); decay.reset(); }
};

void check_operands(const Tensor& q, const Tensor& k, const Tensor& v) {
  if (q.dim() != 4 || k.shape() != q.shape() || v.dim() != 4 || v.size(0) != q.size(0) || v.size(1) != q.size(1) ||
      v.size(2) != q.size(2) || q.dtype() != k.dtype() || q.dtype() != v.dtype())
    throw_shape("causal_linear_prefix", "expects q, k (B, H, n, d) and v (B, H, n, e) of one dtype",
                {{"q", &q}, {"k", &k}, {"v", &v}});
}

Tensor prefix(const Tensor& q, const Tensor& k, const Tensor& v, Chunks cs, const Tensor& decay) {
  Tensor out = prefix_kernel(q, k, v, cs, decay);
  if (auto n = make_node<CausalLinearPrefixBackward>({q, k, v})) {
    n->q = save(q);
    n->k = save(k);
    n->v = save(v);
    if (decay.defined()) n->decay = save(decay);
    n->cs = std::move(cs);
    set_history(out, n);
  }
  return out;
}
}  // namespace

Tensor causal_linear_prefix(const Tensor& q, const Tensor& k, const Tensor& v, int64_t chunk) {
  check_operands(q, k, v);
  if (chunk < 1) throw std::invalid_argument("causal_linear_prefix: chunk must be >= 1, got " + std::to_string(chunk));
  return prefix(q, k, v, even_chunks(q.size(2), chunk), Tensor());
}

Tensor causal_linear_prefix(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int64_t>& lengths,
                            const Tensor& decay) {
  check_operands(q, k, v);
  Chunks cs;
  int64_t s = 0;
  for (int64_t len : lengths) {
    if (len < 1) throw std::invalid_argument("causal_linear_prefix: chunk lengths must be >= 1, got " + std::to_string(len));
    cs.push_back({s, len});
    s += len;
  }
  if (s != q.size(2))
    throw std::invalid_argument("causal_linear_prefix: chunk lengths sum to " + std::to_string(s) + ", not n = " +
                                std::to_string(q.size(2)));
  if (decay.defined()) {
    if (decay.shape() != Shape{q.size(0), q.size(1), (int64_t)cs.size(), q.size(3)} || decay.dtype() != q.dtype())
      throw_shape("causal_linear_prefix", "expects decay (B, H, n_chunks, d) of q's dtype, n_chunks = " +
                                              std::to_string(cs.size()),
                  {{"q", &q}, {"decay", &decay}});
    if (decay.requires_grad())
      throw std::invalid_argument("causal_linear_prefix: decay is a constant (no gradient flows to it); detach it");
  }
  return prefix(q, k, v, std::move(cs), decay);
}

}  // namespace lotgrad
