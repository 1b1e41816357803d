// The chunkwise delta rule: kernels, backward node, public functions.
//
// Layout: per head, row-major blocks. The state is kept transposed, M = Sᵀ (dk, dv), so that
// every product is "rows times a row-major matrix": K Sᵀ = K M, Q Sᵀ = Q M, S += Uᵀ K is
// M += Kᵀ U. One chunk of c positions (rows Q, K (c, dk), V (c, dv), β (c)) with incoming M:
//   A = K Kᵀ,  L = strict-tril(diag(β) A),  R = V − K M
//   (I + L) U = diag(β) R                       (forward substitution, blocked)
//   P = tril(Q Kᵀ) (diagonal included),  O = Q M + P U,  M_out = M + Kᵀ U.
// Backward of one chunk, from dO and G = ∂loss/∂M_out (derived by hand from the lines above):
//   dU = Pᵀ dO + K G,  dP = tril(dO Uᵀ),  dQ = dO Mᵀ + dP K,  dK = dPᵀ Q + U Gᵀ
//   dY = (I + L)⁻ᵀ dU  (backward substitution),  dL = −strict-tril(dY Uᵀ)
//   dβ_t = r_t·dY_t + Σ_{i<t} dL_ti A_ti,  dR = diag(β) dY = dV,  dK −= dR Mᵀ
//   D = diag(β) dL:  dK += D K + Dᵀ K  (A = K Kᵀ)
//   dM = G + Qᵀ dO − Kᵀ dR  (the G of the chunk before).
// The backward walks the chunks in reverse, recomputing A, L, R, U and P from the saved
// incoming state M of each chunk.
//
// All products go through one small GEMM (ops/chunk_gemm.h: register-blocked, vectorised along
// the output row, any strides for the left operand so Aᵀ B needs no copy; products whose
// upper triangle is never read stop at the diagonal). No BLAS: the
// parallel loop over heads is outside, and BLAS is never called from a parallel region
// (core/parallel.h). Each head is computed by one thread in a fixed order: results do not
// depend on the thread count.
#include "delta_rule.h"

#include <algorithm>
#include <string>
#include <vector>

#include "../core/autograd.h"
#include "../core/parallel.h"
#include "chunk_gemm.h"
#include "elementwise.h"
#include "matmul.h"
#include "shape.h"

namespace lotgrad {

namespace {

using detail::gemm;
using detail::Tri;

// y += a·x over n elements.
template <class T>
void axpy(int64_t n, T a, const T* x, T* y) {
  for (int64_t j = 0; j < n; ++j) y[j] += a * x[j];
}

// dst (cols, rows), row stride ldd = srcᵀ; src (rows, cols), row stride lds.
template <class T>
void transpose(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

constexpr int64_t kSolveBlock = 16;  // rows substituted one by one; the rest of the solve is GEMM

// Solves (I + L) X = Y in place (Y (c, w), row stride ldy), L strictly lower (c, c), stride
// ldl: blocks of rows, each first reduced by the solved rows above it (a GEMM), then
// substituted row by row.
template <class T>
void solve_lower(int64_t c, int64_t w, const T* L, int64_t ldl, T* Y, int64_t ldy) {
  for (int64_t t0 = 0; t0 < c; t0 += kSolveBlock) {
    const int64_t t1 = std::min(c, t0 + kSolveBlock);
    if (t0 > 0) gemm<T>(t1 - t0, w, t0, T(-1), L + t0 * ldl, ldl, 1, Y, ldy, Y + t0 * ldy, ldy, true);
    for (int64_t t = t0 + 1; t < t1; ++t)
      for (int64_t i = t0; i < t; ++i) axpy(w, -L[t * ldl + i], Y + i * ldy, Y + t * ldy);
  }
}

// Solves (I + L)ᵀ X = Y in place: the same from the last row up, Lᵀ read through strides.
template <class T>
void solve_upper(int64_t c, int64_t w, const T* L, int64_t ldl, T* Y, int64_t ldy) {
  for (int64_t t1 = c; t1 > 0; t1 -= kSolveBlock) {
    const int64_t t0 = std::max<int64_t>(0, t1 - kSolveBlock);
    // rows t0..t1 −= Lᵀ[t0:t1, t1:c] X[t1:c], with Lᵀ(i, p) = L[(t1 + p)·ldl + t0 + i]
    if (t1 < c) gemm<T>(t1 - t0, w, c - t1, T(-1), L + t1 * ldl + t0, 1, ldl, Y + t1 * ldy, ldy, Y + t0 * ldy, ldy, true);
    for (int64_t t = t1 - 2; t >= t0; --t)
      for (int64_t i = t + 1; i < t1; ++i) axpy(w, -L[i * ldl + t], Y + i * ldy, Y + t * ldy);
  }
}

// ---- one head --------------------------------------------------------------------------
struct Dims {
  int64_t n, dk, dv, C;
  int64_t chunks() const { return (n + C - 1) / C; }
};

// Per-thread work buffers, sized for a full chunk (C rows); leading dimensions C, dk or dv.
template <class T>
struct Scratch {
  std::vector<T> Kt, A, L, P, R, U, M, Mt, G, Gt, Ut, dU, dP, D;
  explicit Scratch(const Dims& d, bool backward) {
    const int64_t C = d.C, cc = d.C * d.C;
    Kt.resize(d.dk * C), A.resize(cc), L.resize(cc), P.resize(cc), R.resize(C * d.dv), U.resize(C * d.dv);
    M.resize(d.dk * d.dv);
    if (!backward) return;
    Mt.resize(d.dk * d.dv), G.resize(d.dk * d.dv), Gt.resize(d.dk * d.dv), Ut.resize(d.dv * C), dU.resize(C * d.dv);
    dP.resize(cc), D.resize(cc);
  }
};

// The shared part of forward and backward for one chunk of c rows with incoming state M:
// Kt = Kᵀ, A = K Kᵀ, L = strict-tril(diag(β) A), R = V − K M, U = (I + L)⁻¹ diag(β) R,
// P = tril(Q Kᵀ).
template <class T>
void chunk_core(const T* Q, const T* K, const T* V, const T* b, const T* M, int64_t c, const Dims& d, Scratch<T>& s) {
  const int64_t C = d.C, dk = d.dk, dv = d.dv;
  transpose(c, dk, K, dk, s.Kt.data(), C);
  gemm<T>(c, c, dk, 1, K, dk, 1, s.Kt.data(), C, s.A.data(), C, false, Tri::full, /*lower_out=*/true);
  gemm<T>(c, c, dk, 1, Q, dk, 1, s.Kt.data(), C, s.P.data(), C, false, Tri::full, /*lower_out=*/true);
  for (int64_t t = 0; t < c; ++t)
    for (int64_t i = 0; i < c; ++i) {
      s.L[t * C + i] = i < t ? b[t] * s.A[t * C + i] : T(0);
      if (i > t) s.P[t * C + i] = 0;
    }
  std::copy(V, V + c * dv, s.R.data());
  gemm<T>(c, dv, dk, -1, K, dk, 1, M, dv, s.R.data(), dv, true);
  for (int64_t t = 0; t < c; ++t)
    for (int64_t j = 0; j < dv; ++j) s.U[t * dv + j] = b[t] * s.R[t * dv + j];
  solve_lower(c, dv, s.L.data(), C, s.U.data(), dv);
}

// o (n, dv) for one head; states (chunks, dk, dv) receives each chunk's incoming M when given.
template <class T>
void forward_head(const T* q, const T* k, const T* v, const T* beta, T* o, T* states, const Dims& d, Scratch<T>& s) {
  const int64_t C = d.C, dk = d.dk, dv = d.dv;
  T* M = s.M.data();
  std::fill(s.M.begin(), s.M.end(), T(0));
  for (int64_t c0 = 0, ci = 0; c0 < d.n; c0 += C, ++ci) {
    const int64_t c = std::min(C, d.n - c0);
    const T *Q = q + c0 * dk, *K = k + c0 * dk;
    if (states) std::copy(M, M + dk * dv, states + ci * dk * dv);
    chunk_core(Q, K, v + c0 * dv, beta + c0, M, c, d, s);
    T* O = o + c0 * dv;
    gemm<T>(c, dv, dk, 1, Q, dk, 1, M, dv, O, dv, false);                              // Q M
    gemm<T>(c, dv, c, 1, s.P.data(), C, 1, s.U.data(), dv, O, dv, true, Tri::lower);  // + P U
    gemm<T>(dk, dv, c, 1, K, 1, dk, s.U.data(), dv, M, dv, true);                     // M += Kᵀ U
  }
}

// Gradients of one head (every element of dq, dk, dv, db written), from its saved states.
template <class T>
void backward_head(const T* q, const T* k, const T* v, const T* beta, const T* states, const T* go, T* dq, T* dk_,
                   T* dv_, T* db, const Dims& d, Scratch<T>& s) {
  const int64_t C = d.C, dk = d.dk, dv = d.dv;
  T *G = s.G.data(), *Mt = s.Mt.data(), *Gt = s.Gt.data(), *Ut = s.Ut.data(), *dU = s.dU.data(), *dP = s.dP.data(),
    *D = s.D.data(), *U = s.U.data();
  std::fill(s.G.begin(), s.G.end(), T(0));
  for (int64_t ci = d.chunks() - 1; ci >= 0; --ci) {
    const int64_t c0 = ci * C, c = std::min(C, d.n - c0);
    const T *Q = q + c0 * dk, *K = k + c0 * dk, *b = beta + c0, *M = states + ci * dk * dv, *dO = go + c0 * dv;
    T *dQ = dq + c0 * dk, *dK = dk_ + c0 * dk, *dR = dv_ + c0 * dv, *dB = db + c0;
    chunk_core(Q, K, v + c0 * dv, b, M, c, d, s);
    transpose(c, dv, U, dv, Ut, C);
    transpose(dk, dv, M, dv, Mt, dk);
    transpose(dk, dv, G, dv, Gt, dk);
    // dU = Pᵀ dO + K G
    gemm<T>(c, dv, c, 1, s.P.data(), 1, C, dO, dv, dU, dv, false, Tri::upper);
    gemm<T>(c, dv, dk, 1, K, dk, 1, G, dv, dU, dv, true);
    // dP = tril(dO Uᵀ); dQ = dO Mᵀ + dP K; dK = dPᵀ Q + U Gᵀ
    gemm<T>(c, c, dv, 1, dO, dv, 1, Ut, C, dP, C, false, Tri::full, /*lower_out=*/true);
    for (int64_t t = 0; t < c; ++t) std::fill(dP + t * C + t + 1, dP + t * C + c, T(0));
    gemm<T>(c, dk, dv, 1, dO, dv, 1, Mt, dk, dQ, dk, false);
    gemm<T>(c, dk, c, 1, dP, C, 1, K, dk, dQ, dk, true, Tri::lower);
    gemm<T>(c, dk, c, 1, dP, 1, C, Q, dk, dK, dk, false, Tri::upper);
    gemm<T>(c, dk, dv, 1, U, dv, 1, Gt, dk, dK, dk, true);
    // dY = (I + L)⁻ᵀ dU (in dU); dβ_t = r_t·dY_t; dR = diag(β) dY is dV
    solve_upper(c, dv, s.L.data(), C, dU, dv);
    for (int64_t t = 0; t < c; ++t) {
      T acc = 0;
      for (int64_t j = 0; j < dv; ++j) {
        acc += s.R[t * dv + j] * dU[t * dv + j];
        dR[t * dv + j] = b[t] * dU[t * dv + j];
      }
      dB[t] = acc;
    }
    gemm<T>(c, dk, dv, -1, dR, dv, 1, Mt, dk, dK, dk, true);  // dK −= dR Mᵀ
    // dL = −strict-tril(dY Uᵀ): dβ_t += Σ_{i<t} dL_ti A_ti; D = diag(β) dL; dK += (D + Dᵀ) K
    gemm<T>(c, c, dv, -1, dU, dv, 1, Ut, C, D, C, false, Tri::full, /*lower_out=*/true);
    for (int64_t t = 0; t < c; ++t) {
      T acc = 0;
      for (int64_t i = 0; i < t; ++i) {
        acc += D[t * C + i] * s.A[t * C + i];
        D[t * C + i] *= b[t];
      }
      std::fill(D + t * C + t, D + t * C + c, T(0));
      dB[t] += acc;
    }
    gemm<T>(c, dk, c, 1, D, C, 1, K, dk, dK, dk, true, Tri::lower);
    gemm<T>(c, dk, c, 1, D, 1, C, K, dk, dK, dk, true, Tri::upper);
    // the state's gradient before this chunk: G + Qᵀ dO − Kᵀ dR
    gemm<T>(dk, dv, c, 1, Q, 1, dk, dO, dv, G, dv, true);
    gemm<T>(dk, dv, c, -1, K, 1, dk, dR, dv, G, dv, true);
  }
}

// ---- the op ----------------------------------------------------------------------------
// A chunk longer than the sequence is the whole sequence (the work buffers are C×C).
Dims dims_of(const Tensor& q, const Tensor& v, int64_t chunk) {
  return {q.size(2), q.size(3), v.size(3), std::max<int64_t>(1, std::min(chunk, q.size(2)))};
}

// Runs f(head index, scratch) for every one of the B·H heads, heads split over the threads.
template <class T, class F>
void for_heads(int64_t BH, const Dims& d, bool backward, F&& f) {
  parallel_for(0, BH, 1, [&](int64_t h0, int64_t h1) {
    Scratch<T> s(d, backward);
    for (int64_t h = h0; h < h1; ++h) f(h, s);
  });
}

template <class T>
void forward_kernel(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, Tensor& o, T* states,
                    const Dims& d) {
  const int64_t BH = q.size(0) * q.size(1), qs = d.n * d.dk, vs = d.n * d.dv, ss = d.chunks() * d.dk * d.dv;
  const T *Q = q.data_ptr<T>(), *K = k.data_ptr<T>(), *V = v.data_ptr<T>(), *Bt = beta.data_ptr<T>();
  T* O = o.data_ptr<T>();
  for_heads<T>(BH, d, false, [&](int64_t h, Scratch<T>& s) {
    forward_head(Q + h * qs, K + h * qs, V + h * vs, Bt + h * d.n, O + h * vs, states ? states + h * ss : nullptr, d, s);
  });
}

struct DeltaRuleBackward : Node {
  SavedTensor q, k, v, beta, states;
  int64_t chunk = 64;
  const char* name() const override { return "DeltaRuleBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    if (!g[0].defined()) return {Tensor(), Tensor(), Tensor(), Tensor()};
    const Tensor Q = q.unpack(this), K = k.unpack(this), V = v.unpack(this), Bt = beta.unpack(this),
                 S = states.unpack(this), G = g[0].contiguous();
    Tensor dq = make_tensor_uninit(Q.shape(), Q.dtype()), dk = make_tensor_uninit(K.shape(), K.dtype()),
           dv = make_tensor_uninit(V.shape(), V.dtype()), db = make_tensor_uninit(Bt.shape(), Bt.dtype());
    auto run = [&]<class T>(T) {
      const Dims d = dims_of(Q, V, chunk);
      const int64_t qs = d.n * d.dk, vs = d.n * d.dv, ss = d.chunks() * d.dk * d.dv;
      const T *pq = Q.data_ptr<T>(), *pk = K.data_ptr<T>(), *pv = V.data_ptr<T>(), *pb = Bt.data_ptr<T>(),
              *ps = S.data_ptr<T>(), *pg = G.data_ptr<T>();
      T *gq = dq.data_ptr<T>(), *gk = dk.data_ptr<T>(), *gv = dv.data_ptr<T>(), *gb = db.data_ptr<T>();
      for_heads<T>(Q.size(0) * Q.size(1), d, true, [&](int64_t h, Scratch<T>& s) {
        backward_head(pq + h * qs, pk + h * qs, pv + h * vs, pb + h * d.n, ps + h * ss, pg + h * vs, gq + h * qs,
                      gk + h * qs, gv + h * vs, gb + h * d.n, d, s);
      });
    };
    if (Q.dtype() == kFloat64) run(double{});
    else run(float{});
    return {needs_grad(0) ? dq : Tensor(), needs_grad(1) ? dk : Tensor(), needs_grad(2) ? dv : Tensor(),
            needs_grad(3) ? db : Tensor()};
  }
  void release() override { q.reset(); k.reset(); v.reset(); beta.reset(); states.reset(); }
};

void check_operands(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta) {
  const bool defined = q.defined() && k.defined() && v.defined() && beta.defined();
  const bool shapes = defined && q.dim() == 4 && k.shape() == q.shape() && v.dim() == 4 && beta.dim() == 3 &&
                      v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2) &&
                      beta.size(0) == q.size(0) && beta.size(1) == q.size(1) && beta.size(2) == q.size(2);
  if (!shapes)
    throw_shape(op, "expects q, k (B, H, n, dk), v (B, H, n, dv) and beta (B, H, n) with the same B, H, n",
                {{"q", &q}, {"k", &k}, {"v", &v}, {"beta", &beta}});
  if (!is_floating(q.dtype()) || k.dtype() != q.dtype() || v.dtype() != q.dtype() || beta.dtype() != q.dtype())
    throw_dtype(op, "expects q, k, v and beta of one float dtype (f32 or f64)",
                {{"q", &q}, {"k", &k}, {"v", &v}, {"beta", &beta}});
}

}  // namespace

Tensor delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, int64_t chunk) {
  check_operands("delta_rule", q, k, v, beta);
  if (chunk < 1) throw std::invalid_argument("delta_rule: chunk must be >= 1, got " + std::to_string(chunk));
  const Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), bc = beta.contiguous();
  const Dims d = dims_of(qc, vc, chunk);
  Tensor o = make_tensor_uninit(vc.shape(), vc.dtype());
  auto node = make_node<DeltaRuleBackward>({q, k, v, beta});
  // The incoming state of every chunk, (B, H, chunks, dk, dv): only when a backward will run.
  Tensor states = node ? make_tensor_uninit({q.size(0), q.size(1), d.chunks(), d.dk, d.dv}, q.dtype()) : Tensor();
  if (q.dtype() == kFloat64)
    forward_kernel<double>(qc, kc, vc, bc, o, node ? states.data_ptr<double>() : nullptr, d);
  else
    forward_kernel<float>(qc, kc, vc, bc, o, node ? states.data_ptr<float>() : nullptr, d);
  if (node) {
    node->q = save(qc);
    node->k = save(kc);
    node->v = save(vc);
    node->beta = save(bc);
    node->states = save(states);
    node->chunk = chunk;
    set_history(o, node);
  }
  return o;
}

int64_t delta_rule_state_bytes(const Tensor& q, const Tensor& v, int64_t chunk) {
  const Dims d = dims_of(q, v, chunk);
  return q.size(0) * q.size(1) * d.chunks() * d.dk * d.dv * (int64_t)dtype_size(q.dtype());
}

Tensor delta_rule_recurrent(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta) {
  check_operands("delta_rule_recurrent", q, k, v, beta);
  const int64_t n = q.size(2);
  Tensor M = Tensor::zeros({q.size(0), q.size(1), q.size(3), v.size(3)}, q.dtype());  // Sᵀ (B, H, dk, dv)
  std::vector<Tensor> outs;
  for (int64_t t = 0; t < n; ++t) {
    const Tensor qt = q.narrow(2, t, 1), kt = k.narrow(2, t, 1), vt = v.narrow(2, t, 1);  // (B, H, 1, d)
    const Tensor bt = beta.narrow(2, t, 1).unsqueeze(-1);                                 // (B, H, 1, 1)
    const Tensor u = mul(sub(vt, matmul(kt, M)), bt);                                     // β_t (v_t − S k_t)
    M = add(M, matmul(kt.transpose(-2, -1), u));                                          // S += u k_tᵀ
    outs.push_back(matmul(qt, M));                                                        // o_t = S_t q_t
  }
  if (outs.empty()) return Tensor::zeros(v.shape(), v.dtype());
  return cat(outs, 2);
}

}  // namespace lotgrad
