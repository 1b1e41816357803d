#include "elementwise.h"

#include <cmath>

#include "../core/autograd.h"
#include "fastmath.h"
#include "gelu_math.h"
#include "map.h"

namespace lotgrad {

namespace {
void check_float(const Tensor& x, const char* op) {
  if (!x.defined()) throw ShapeError(std::string(op) + ": undefined tensor");
  if (!is_floating(x.dtype())) throw_dtype(op, "expects a floating tensor (f32 or f64)", {{"x", &x}});
}
void check_pair(const Tensor& a, const Tensor& b, const char* op) {
  check_float(a, op);
  check_float(b, op);
  if (a.dtype() != b.dtype()) throw_dtype(op, "operands must share a dtype (no implicit promotion)", {{"a", &a}, {"b", &b}});
}

// =======================================================================================
// unary: each op is a functor with fwd(x) and bwd(g, x, y) where y = fwd(x).
// What the backward reads decides what is saved (kSaveX / kSaveY). exp, log, tanh, sigmoid,
// elu, softplus and gelu's tanh form use fastmath's inline functions, so their loops vectorise
// (libm's are one call per element: expf was 17% of a Performer forward + backward).
// =======================================================================================
struct NegOp {
  static constexpr const char* name = "NegBackward";
  static constexpr bool kSaveX = false, kSaveY = false;
  template <class T> T fwd(T x) const { return -x; }
  template <class T> T bwd(T g, T, T) const { return -g; }
};
struct ExpOp {
  static constexpr const char* name = "ExpBackward";
  static constexpr bool kSaveX = false, kSaveY = true;
  template <class T> T fwd(T x) const { return fastmath::fexp_full(x); }
  template <class T> T bwd(T g, T, T y) const { return g * y; }
};
struct LogOp {
  static constexpr const char* name = "LogBackward";
  static constexpr bool kSaveX = true, kSaveY = false;
  template <class T> T fwd(T x) const { return fastmath::flog(x); }
  template <class T> T bwd(T g, T x, T) const { return g / x; }
};
struct SqrtOp {
  static constexpr const char* name = "SqrtBackward";
  static constexpr bool kSaveX = false, kSaveY = true;
  template <class T> T fwd(T x) const { return std::sqrt(x); }
  template <class T> T bwd(T g, T, T y) const { return g * T(0.5) / y; }
};
struct RsqrtOp {
  static constexpr const char* name = "RsqrtBackward";
  static constexpr bool kSaveX = false, kSaveY = true;
  template <class T> T fwd(T x) const { return T(1) / std::sqrt(x); }
  template <class T> T bwd(T g, T, T y) const { return g * T(-0.5) * y * y * y; }
};
struct AbsOp {
  static constexpr const char* name = "AbsBackward";
  static constexpr bool kSaveX = true, kSaveY = false;
  template <class T> T fwd(T x) const { return std::abs(x); }
  template <class T> T bwd(T g, T x, T) const { return x > 0 ? g : (x < 0 ? -g : T(0)); }
};
struct TanhOp {
  static constexpr const char* name = "TanhBackward";
  static constexpr bool kSaveX = false, kSaveY = true;
  template <class T> T fwd(T x) const { return fastmath::ftanh(x); }
  template <class T> T bwd(T g, T, T y) const { return g * (T(1) - y * y); }
};
struct SinOp {
  static constexpr const char* name = "SinBackward";
  static constexpr bool kSaveX = true, kSaveY = false;
  template <class T> T fwd(T x) const { return std::sin(x); }
  template <class T> T bwd(T g, T x, T) const { return g * std::cos(x); }
};
struct CosOp {
  static constexpr const char* name = "CosBackward";
  static constexpr bool kSaveX = true, kSaveY = false;
  template <class T> T fwd(T x) const { return std::cos(x); }
  template <class T> T bwd(T g, T x, T) const { return -g * std::sin(x); }
};
struct SigmoidOp {
  static constexpr const char* name = "SigmoidBackward";
  static constexpr bool kSaveX = false, kSaveY = true;
  template <class T> T fwd(T x) const { return T(1) / (T(1) + fastmath::fexp_full(-x)); }
  template <class T> T bwd(T g, T, T y) const { return g * y * (T(1) - y); }
};
struct ReluOp {
  static constexpr const char* name = "ReluBackward";
  static constexpr bool kSaveX = false, kSaveY = true;  // y > 0 iff x > 0; y is NaN iff x is
  // NaN passes through (as in PyTorch): a NaN turned into 0 would hide a divergence.
  template <class T> T fwd(T x) const { return x > 0 || x != x ? x : T(0); }
  template <class T> T bwd(T g, T, T y) const { return y > 0 || y != y ? g : T(0); }
};
struct GeluErfOp {
  static constexpr const char* name = "GeluBackward";
  static constexpr bool kSaveX = true, kSaveY = false;
  template <class T> T fwd(T x) const { return gelu_erf(x); }
  template <class T> T bwd(T g, T x, T) const { return g * gelu_erf_grad(x); }
};
struct GeluTanhOp {
  static constexpr const char* name = "GeluTanhBackward";
  static constexpr bool kSaveX = true, kSaveY = false;
  static constexpr double kA = 0.7978845608028654, kB = 0.044715;  // sqrt(2/pi)
  template <class T> T fwd(T x) const { return T(0.5) * x * (T(1) + fastmath::ftanh(T(kA) * (x + T(kB) * x * x * x))); }
  template <class T> T bwd(T g, T x, T) const {
    const T t = fastmath::ftanh(T(kA) * (x + T(kB) * x * x * x));
    return g * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * T(kA) * (T(1) + T(3 * kB) * x * x));
  }
};
struct EluOp {
  static constexpr const char* name = "EluBackward";
  static constexpr bool kSaveX = true, kSaveY = false;
  double alpha = 1.0;
  // Branch-free (fastmath's inline exp, both sides computed, alpha read unconditionally) so
  // the loops vectorise: libm's expm1f took most of linear attention's time (its elu(x) + 1
  // feature map).
  template <class T> T fwd(T x) const {
    const T neg = T(alpha) * fastmath::fexpm1(x);
    return x > 0 ? x : neg;
  }
  template <class T> T bwd(T g, T x, T) const {
    const T neg = g * T(alpha) * fastmath::fexp(x);
    return x > 0 ? g : neg;
  }
};
struct SoftplusOp {
  static constexpr const char* name = "SoftplusBackward";
  static constexpr bool kSaveX = true, kSaveY = false;
  double beta = 1.0, threshold = 20.0;
  // log1p(exp(bx)) = max(bx, 0) + log1p(exp(-|bx|)): the exp cannot overflow, and a tiny
  // softplus keeps its subnormal value. NaN stays NaN (through the log1p term).
  template <class T> T fwd(T x) const {
    const T bx = T(beta) * x;
    const T sp = ((bx > T(0) ? bx : T(0)) + fastmath::flog1p(fastmath::fexp_full(-std::abs(bx)))) / T(beta);
    return bx > T(threshold) ? x : sp;
  }
  template <class T> T bwd(T g, T x, T) const {
    const T bx = T(beta) * x;
    const T gs = g / (T(1) + fastmath::fexp_full(-bx));
    return bx > T(threshold) ? g : gs;
  }
};
struct ClampOp {
  static constexpr const char* name = "ClampBackward";
  static constexpr bool kSaveX = true, kSaveY = false;
  double lo = -INFINITY, hi = INFINITY;
  template <class T> T fwd(T x) const { return x < T(lo) ? T(lo) : (x > T(hi) ? T(hi) : x); }
  template <class T> T bwd(T g, T x, T) const { return (x >= T(lo) && x <= T(hi)) ? g : T(0); }
};
struct PowScalarOp {
  static constexpr const char* name = "PowBackward";
  static constexpr bool kSaveX = true, kSaveY = false;
  double p = 1.0;
  template <class T> T fwd(T x) const { return p == 2.0 ? x * x : std::pow(x, T(p)); }
  template <class T> T bwd(T g, T x, T) const {
    if (p == 0.0) return T(0);
    return p == 2.0 ? g * T(2) * x : g * T(p) * std::pow(x, T(p - 1));
  }
};

template <class Op>
struct UnaryBackward : Node {
  Op op;
  SavedTensor x, y;
  explicit UnaryBackward(Op o) : op(o) {}
  const char* name() const override { return Op::name; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    const Tensor& go = g[0];
    const Tensor xs = Op::kSaveX ? x.unpack(this) : go;
    const Tensor ys = Op::kSaveY ? y.unpack(this) : go;
    Tensor gx = dispatch_float(go.dtype(), name(), [&]<class T>() {
      return map_n<T, T, 3>({&go, &xs, &ys}, go.shape(), [op = op](T gv, T xv, T yv) { return op.template bwd<T>(gv, xv, yv); });
    });
    return {gx};
  }
  void release() override { x.reset(); y.reset(); }
};

template <class Op>
Tensor unary(const Tensor& x, const char* opname, Op op = Op{}) {
  check_float(x, opname);
  Tensor out = dispatch_float(x.dtype(), opname, [&]<class T>() {
    return map_n<T, T, 1>({&x}, x.shape(), [op](T v) { return op.template fwd<T>(v); });
  });
  if (auto n = make_node<UnaryBackward<Op>>({x}, op)) {
    if (Op::kSaveX) n->x = save(x);
    if (Op::kSaveY) n->y = save(out);
    set_history(out, n);
  }
  return out;
}

// =======================================================================================
// binary
// =======================================================================================
template <class F>
Tensor binary_map(const Tensor& a, const Tensor& b, const char* op, F f) {
  check_pair(a, b, op);
  const Shape s = broadcast_all<2>({&a, &b}, op);
  return dispatch_float(a.dtype(), op, [&]<class T>() { return map_n<T, T, 2>({&a, &b}, s, [f](T x, T y) { return f(x, y); }); });
}

struct AddBackward : Node {
  double alpha = 1.0;
  const char* name() const override { return "AddBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor gb;
    if (needs_grad(1)) gb = alpha == 1.0 ? g[0] : mul(g[0], alpha);
    return {g[0], gb};
  }
};
struct MulBackward : Node {
  SavedTensor a, b;
  const char* name() const override { return "MulBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor ga, gb;
    if (needs_grad(0)) ga = mul(g[0], b.unpack(this));
    if (needs_grad(1)) gb = mul(g[0], a.unpack(this));
    return {ga, gb};
  }
  void release() override { a.reset(); b.reset(); }
};
struct DivBackward : Node {
  SavedTensor a, b;
  const char* name() const override { return "DivBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor bb = b.unpack(this), ga, gb;
    if (needs_grad(0)) ga = div(g[0], bb);
    if (needs_grad(1)) {
      Tensor aa = a.unpack(this);
      gb = binary_map(mul(g[0], aa), bb, "div_backward", [](auto ga_, auto b_) { return -ga_ / (b_ * b_); });
    }
    return {ga, gb};
  }
  void release() override { a.reset(); b.reset(); }
};
// maximum (is_max) / minimum: the gradient goes to the winner; ties split it equally.
struct MinMaxBackward : Node {
  SavedTensor a, b;
  bool is_max = true;
  const char* name() const override { return is_max ? "MaximumBackward" : "MinimumBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor av = a.unpack(this), bv = b.unpack(this), ga, gb;
    const Tensor& go = g[0];
    const bool mx = is_max;
    const Shape s = go.shape();
    auto share = [&](const Tensor& x, const Tensor& y) {
      return dispatch_float(go.dtype(), name(), [&]<class T>() {
        return map_n<T, T, 3>({&go, &x, &y}, s, [mx](T gv, T xv, T yv) {
          if (xv == yv) return gv * T(0.5);
          return (mx ? xv > yv : xv < yv) ? gv : T(0);
        });
      });
    };
    if (needs_grad(0)) ga = share(av, bv);
    if (needs_grad(1)) gb = share(bv, av);
    return {ga, gb};
  }
  void release() override { a.reset(); b.reset(); }
};
struct PowBackward : Node {
  SavedTensor a, b, y;
  const char* name() const override { return "PowBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor av = a.unpack(this), bv = b.unpack(this), ga, gb;
    const Tensor& go = g[0];
    const Shape s = go.shape();
    if (needs_grad(0))
      ga = dispatch_float(go.dtype(), name(), [&]<class T>() {
        return map_n<T, T, 3>({&go, &av, &bv}, s, [](T gv, T x, T p) { return p == T(0) ? T(0) : gv * p * std::pow(x, p - T(1)); });
      });
    if (needs_grad(1)) {
      Tensor yv = y.unpack(this);
      gb = dispatch_float(go.dtype(), name(), [&]<class T>() {
        return map_n<T, T, 3>({&go, &yv, &av}, s, [](T gv, T out, T x) { return x > T(0) ? gv * out * std::log(x) : T(0); });
      });
    }
    return {ga, gb};
  }
  void release() override { a.reset(); b.reset(); y.reset(); }
};
}  // namespace

// ---- binary public functions ----------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b, double alpha) {
  Tensor out = alpha == 1.0 ? binary_map(a, b, "add", [](auto x, auto y) { return x + y; })
                            : binary_map(a, b, "add", [alpha](auto x, auto y) { return x + decltype(y)(alpha) * y; });
  if (auto n = make_node<AddBackward>({a, b})) {
    n->alpha = alpha;
    set_history(out, n);
  }
  return out;
}
Tensor sub(const Tensor& a, const Tensor& b, double alpha) { return add(a, b, -alpha); }
Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_map(a, b, "mul", [](auto x, auto y) { return x * y; });
  if (auto n = make_node<MulBackward>({a, b})) {
    if (n->needs_grad(1)) n->a = save(a);  // keep only what the needed gradients read
    if (n->needs_grad(0)) n->b = save(b);
    set_history(out, n);
  }
  return out;
}
Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_map(a, b, "div", [](auto x, auto y) { return x / y; });
  if (auto n = make_node<DivBackward>({a, b})) {
    if (n->needs_grad(1)) n->a = save(a);
    n->b = save(b);
    set_history(out, n);
  }
  return out;
}
static Tensor minmax(const Tensor& a, const Tensor& b, bool is_max) {
  Tensor out = is_max ? binary_map(a, b, "maximum", [](auto x, auto y) { return x >= y ? x : y; })
                      : binary_map(a, b, "minimum", [](auto x, auto y) { return x <= y ? x : y; });
  if (auto n = make_node<MinMaxBackward>({a, b})) {
    n->is_max = is_max;
    n->a = save(a);
    n->b = save(b);
    set_history(out, n);
  }
  return out;
}
Tensor maximum(const Tensor& a, const Tensor& b) { return minmax(a, b, true); }
Tensor minimum(const Tensor& a, const Tensor& b) { return minmax(a, b, false); }
Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_map(a, b, "pow", [](auto x, auto y) { return std::pow(x, y); });
  if (auto n = make_node<PowBackward>({a, b})) {
    n->a = save(a);
    n->b = save(b);
    if (n->needs_grad(1)) n->y = save(out);
    set_history(out, n);
  }
  return out;
}

static Tensor scalar_like(const Tensor& a, double v, const char* op) {
  check_float(a, op);
  return Tensor::scalar(v, a.dtype());
}
Tensor add(const Tensor& a, double b) { return add(a, scalar_like(a, b, "add")); }
Tensor sub(const Tensor& a, double b) { return add(a, scalar_like(a, -b, "sub")); }
Tensor rsub(const Tensor& a, double b) { return sub(scalar_like(a, b, "rsub"), a); }
Tensor mul(const Tensor& a, double b) { return mul(a, scalar_like(a, b, "mul")); }
Tensor div(const Tensor& a, double b) { return mul(a, scalar_like(a, 1.0 / b, "div")); }
Tensor rdiv(const Tensor& a, double b) { return div(scalar_like(a, b, "rdiv"), a); }
Tensor pow(const Tensor& a, double p) {
  PowScalarOp op;
  op.p = p;
  return unary(a, "pow", op);
}

// ---- unary public functions -----------------------------------------------------------
Tensor neg(const Tensor& x) { return unary<NegOp>(x, "neg"); }
Tensor exp(const Tensor& x) { return unary<ExpOp>(x, "exp"); }
Tensor log(const Tensor& x) { return unary<LogOp>(x, "log"); }
Tensor sqrt(const Tensor& x) { return unary<SqrtOp>(x, "sqrt"); }
Tensor rsqrt(const Tensor& x) { return unary<RsqrtOp>(x, "rsqrt"); }
Tensor abs(const Tensor& x) { return unary<AbsOp>(x, "abs"); }
Tensor tanh(const Tensor& x) { return unary<TanhOp>(x, "tanh"); }
Tensor sin(const Tensor& x) { return unary<SinOp>(x, "sin"); }
Tensor cos(const Tensor& x) { return unary<CosOp>(x, "cos"); }
Tensor sigmoid(const Tensor& x) { return unary<SigmoidOp>(x, "sigmoid"); }
Tensor relu(const Tensor& x) { return unary<ReluOp>(x, "relu"); }
Tensor gelu(const Tensor& x, const std::string& approximate) {
  if (approximate == "none") return unary<GeluErfOp>(x, "gelu");
  if (approximate == "tanh") return unary<GeluTanhOp>(x, "gelu");
  throw std::invalid_argument("gelu: approximate must be \"none\" or \"tanh\", got \"" + approximate + "\"");
}
Tensor elu(const Tensor& x, double alpha) {
  EluOp op;
  op.alpha = alpha;
  return unary(x, "elu", op);
}
Tensor softplus(const Tensor& x, double beta, double threshold) {
  SoftplusOp op;
  op.beta = beta;
  op.threshold = threshold;
  return unary(x, "softplus", op);
}
Tensor clamp(const Tensor& x, std::optional<double> min, std::optional<double> max) {
  ClampOp op;
  if (min) op.lo = *min;
  if (max) op.hi = *max;
  if (min && max && *min > *max) throw std::invalid_argument("clamp: min > max");
  return unary(x, "clamp", op);
}

// ---- comparisons ----------------------------------------------------------------------
namespace {
template <class F>
Tensor compare(const Tensor& a, const Tensor& b, const char* op, F f) {
  if (a.dtype() != b.dtype()) throw_dtype(op, "operands must share a dtype", {{"a", &a}, {"b", &b}});
  const Shape s = broadcast_all<2>({&a, &b}, op);
  return dispatch_all(a.dtype(), [&]<class T>() { return map_n<bool, T, 2>({&a, &b}, s, [f](T x, T y) { return f(x, y); }); });
}
Tensor scalar_of(const Tensor& a, double v) { return Tensor::scalar(v, a.dtype()); }
}  // namespace
Tensor eq(const Tensor& a, const Tensor& b) { return compare(a, b, "eq", [](auto x, auto y) { return x == y; }); }
Tensor ne(const Tensor& a, const Tensor& b) { return compare(a, b, "ne", [](auto x, auto y) { return x != y; }); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare(a, b, "lt", [](auto x, auto y) { return x < y; }); }
Tensor le(const Tensor& a, const Tensor& b) { return compare(a, b, "le", [](auto x, auto y) { return x <= y; }); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare(a, b, "gt", [](auto x, auto y) { return x > y; }); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare(a, b, "ge", [](auto x, auto y) { return x >= y; }); }
Tensor eq(const Tensor& a, double b) { return eq(a, scalar_of(a, b)); }
Tensor ne(const Tensor& a, double b) { return ne(a, scalar_of(a, b)); }
Tensor lt(const Tensor& a, double b) { return lt(a, scalar_of(a, b)); }
Tensor le(const Tensor& a, double b) { return le(a, scalar_of(a, b)); }
Tensor gt(const Tensor& a, double b) { return gt(a, scalar_of(a, b)); }
Tensor ge(const Tensor& a, double b) { return ge(a, scalar_of(a, b)); }
Tensor logical_not(const Tensor& m) {
  if (m.dtype() != kBool) throw_dtype("logical_not", "expects a bool tensor", {{"mask", &m}});
  return map_n<bool, bool, 1>({&m}, m.shape(), [](bool v) { return !v; });
}

// ---- where / masked_fill --------------------------------------------------------------
namespace {
// out = cond ? a : b  (cond bool; a, b of type T)
template <class T>
Tensor where_kernel(const Tensor& cond, const Tensor& a, const Tensor& b, const Shape& s) {
  Tensor out = make_tensor(s, dtype_of<T>::value);
  std::array<Shape, 4> st{out.strides(), broadcast_strides(cond, s), broadcast_strides(a, s), broadcast_strides(b, s)};
  T* o = out.data_ptr<T>();
  const bool* c = cond.data_ptr<bool>();
  const T* ap = a.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  strided_loop<4>(s, st, kParallelGrain, [&](auto off, int64_t len, auto in) {
    for (int64_t i = 0; i < len; ++i)
      o[off[0] + i] = c[off[1] + i * in[1]] ? ap[off[2] + i * in[2]] : bp[off[3] + i * in[3]];
  });
  return out;
}
struct WhereBackward : Node {
  SavedTensor cond;
  const char* name() const override { return "WhereBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor c = cond.unpack(this), ga, gb;
    Tensor zero = Tensor::scalar(0.0, g[0].dtype());
    if (needs_grad(1)) ga = where(c, g[0], zero);
    if (needs_grad(2)) gb = where(c, zero, g[0]);
    return {Tensor(), ga, gb};
  }
  void release() override { cond.reset(); }
};
}  // namespace
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  if (cond.dtype() != kBool) throw_dtype("where", "condition must be bool", {{"cond", &cond}, {"a", &a}, {"b", &b}});
  if (a.dtype() != b.dtype()) throw_dtype("where", "a and b must share a dtype", {{"cond", &cond}, {"a", &a}, {"b", &b}});
  const Shape s = broadcast_all<3>({&cond, &a, &b}, "where");
  Tensor out = dispatch_all(a.dtype(), [&]<class T>() { return where_kernel<T>(cond, a, b, s); });
  if (auto n = make_node<WhereBackward>({Tensor(), a, b})) {
    n->cond = save(cond);
    set_history(out, n);
  }
  return out;
}
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  if (mask.dtype() != kBool) throw_dtype("masked_fill", "mask must be bool", {{"x", &x}, {"mask", &mask}});
  if (broadcast_shapes(mask.shape(), x.shape(), "masked_fill", &mask, &x) != x.shape())
    throw_shape("masked_fill", "mask must broadcast to x's shape", {{"x", &x}, {"mask", &mask}});
  return where(mask, Tensor::scalar(value, x.dtype()), x);
}

}  // namespace lotgrad
