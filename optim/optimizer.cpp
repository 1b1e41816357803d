#include "optimizer.h"

#include <cmath>
#include <set>
#include <stdexcept>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {

OptimOptions resolve(const OptimOptions& d, const GroupOverrides& o) {
  OptimOptions r = d;
  if (o.lr) r.lr = *o.lr;
  if (o.weight_decay) r.weight_decay = *o.weight_decay;
  if (o.momentum) r.momentum = *o.momentum;
  if (o.dampening) r.dampening = *o.dampening;
  if (o.nesterov) r.nesterov = *o.nesterov;
  if (o.beta1) r.beta1 = *o.beta1;
  if (o.beta2) r.beta2 = *o.beta2;
  if (o.eps) r.eps = *o.eps;
  return r;
}

void validate(const char* opt, const OptimOptions& o, const std::string& group) {
  auto bad = [&](const std::string& rule) {
    throw std::invalid_argument(std::string(opt) + ": " + rule + " (param group " + group + ")");
  };
  auto finite_nonneg = [&](double v, const char* what) {
    if (!(v >= 0.0) || !std::isfinite(v)) bad(std::string(what) + " must be finite and >= 0, got " + std::to_string(v));
  };
  finite_nonneg(o.lr, "lr");
  finite_nonneg(o.weight_decay, "weight_decay");
  finite_nonneg(o.momentum, "momentum");
  finite_nonneg(o.dampening, "dampening");
  finite_nonneg(o.eps, "eps");
  if (!(o.beta1 >= 0.0 && o.beta1 < 1.0)) bad("beta1 must be in [0, 1), got " + std::to_string(o.beta1));
  if (!(o.beta2 >= 0.0 && o.beta2 < 1.0)) bad("beta2 must be in [0, 1), got " + std::to_string(o.beta2));
}

// Strict "123" -> 123; -1 on anything else.
int64_t parse_index(const std::string& s) {
  if (s.empty() || s.size() > 9) return -1;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

// ---- fused update kernels over contiguous data ---------------------------------------

template <class T>
void sgd_kernel(T* p, const T* g, T* buf, int64_t n, const OptimOptions& o, bool first) {
  const T lr = (T)o.lr, wd = (T)o.weight_decay, mom = (T)o.momentum, damp1 = (T)(1.0 - o.dampening);
  const bool use_wd = o.weight_decay != 0.0, nesterov = o.nesterov;
  parallel_for(0, n, kParallelGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T d = g[i];
      if (use_wd) d = d + wd * p[i];
      if (buf) {
        buf[i] = first ? d : buf[i] * mom + damp1 * d;
        d = nesterov ? d + mom * buf[i] : buf[i];
      }
      p[i] = p[i] - lr * d;
    }
  });
}

// One chunk [b, e) of the Adam update; L2 / DECAY are template flags so the loop body has
// no branches. m, v: first and second moments.
// Note: GCC vectorises this loop only under -fno-math-errno (otherwise every sqrt carries
// an errno branch); sqrt is correctly rounded either way, so the bits do not change.
template <class T, bool L2, bool DECAY>
void adam_chunk(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
                                      int64_t b, int64_t e, T wd, T keep, T omb1, T b2, T omb2, T eps, T neg_step,
                                      T bc2s) {
  for (int64_t i = b; i < e; ++i) {
    T gi = g[i];
    if constexpr (L2) gi = gi + wd * p[i];
    T pi = p[i];
    if constexpr (DECAY) pi = pi * keep;
    const T mi = m[i] + omb1 * (gi - m[i]);
    const T vi = v[i] * b2 + omb2 * (gi * gi);
    const T denom = std::sqrt(vi) / bc2s + eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + neg_step * (mi / denom);
  }
}

// bc2_sqrt = sqrt(1 - b2^t), step_size = lr / (1 - b1^t).
template <class T>
void adam_kernel(T* p, const T* g, T* m, T* v, int64_t n, const OptimOptions& o, bool decoupled, double step_size,
                 double bc2_sqrt) {
  const bool l2 = !decoupled && o.weight_decay != 0.0;
  const bool decay = decoupled && o.weight_decay != 0.0;
  const T wd = (T)o.weight_decay, keep = (T)(1.0 - o.lr * o.weight_decay);
  const T omb1 = (T)(1.0 - o.beta1), b2 = (T)o.beta2, omb2 = (T)(1.0 - o.beta2), eps = (T)o.eps;
  const T neg_step = (T)(-step_size), bc2s = (T)bc2_sqrt;
  parallel_for(0, n, kParallelGrain, [&](int64_t b, int64_t e) {
    auto run = [&]<bool L2, bool DECAY>() {
      adam_chunk<T, L2, DECAY>(p, g, m, v, b, e, wd, keep, omb1, b2, omb2, eps, neg_step, bc2s);
    };
    if (l2) run.template operator()<true, false>();
    else if (decay) run.template operator()<false, true>();
    else run.template operator()<false, false>();
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Optimizer
// ---------------------------------------------------------------------------------------

std::vector<ParamGroup> decay_groups(const std::vector<std::pair<std::string, Tensor>>& named,
                                     const std::vector<std::string>& no_decay_substrings) {
  ParamGroup decay{{}, {}, "decay"}, no_decay{{}, {}, "no_decay"};
  no_decay.overrides.weight_decay = 0.0;
  for (const auto& [name, t] : named) {
    bool skip = t.dim() < 2;
    for (const auto& s : no_decay_substrings) skip = skip || (!s.empty() && name.find(s) != std::string::npos);
    (skip ? no_decay : decay).params.push_back(t);
  }
  std::vector<ParamGroup> out;
  if (!decay.params.empty()) out.push_back(decay);
  if (!no_decay.params.empty()) out.push_back(no_decay);
  return out;
}

void Optimizer::add_param_group(const ParamGroup& pg) {
  const std::string label = pg.name.empty() ? std::to_string(groups_.size()) : pg.name;
  Group g;
  g.options = resolve(defaults_, pg.overrides);
  validate(name(), g.options, label);
  g.base_lr = g.options.lr;
  g.name = pg.name;
  for (size_t i = 0; i < pg.params.size(); ++i) {
    const Tensor& p = pg.params[i];
    const std::string where = std::string(name()) + ": param group " + label + ", parameter " + std::to_string(i);
    if (!p.defined()) throw std::invalid_argument(where + " is undefined");
    if (!is_floating(p.dtype())) throw_dtype(name(), "parameters must be floating (group " + label + ", parameter " +
                                                         std::to_string(i) + ")", {{"param", &p}});
    for (const auto& og : groups_)
      for (const auto& q : og.params)
        if (q.impl() == p.impl()) throw std::invalid_argument(where + " appears in more than one group");
    for (const auto& q : g.params)
      if (q.impl() == p.impl()) throw std::invalid_argument(where + " appears twice in the group");
    g.params.push_back(p);
  }
  groups_.push_back(std::move(g));
  state_.emplace_back(groups_.back().params.size());
}

void Optimizer::zero_grad(bool set_to_none) {
  NoGradGuard ng;
  for (auto& g : groups_)
    for (auto& p : g.params) {
      if (set_to_none) {
        p.zero_grad();
      } else if (Tensor gr = p.grad(); gr.defined()) {
        gr.zero_();
      }
    }
}

void Optimizer::scale_lr(double factor) {
  for (auto& g : groups_) g.options.lr = g.base_lr * factor;
}

template <class F> void Optimizer::for_each_param(const char* op, F&& fn) {
  NoGradGuard ng;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& grp = groups_[gi];
    for (size_t pi = 0; pi < grp.params.size(); ++pi) {
      const Tensor& p = grp.params[pi];
      Tensor g = p.grad();
      if (!g.defined()) continue;
      if (g.dtype() != p.dtype())
        throw_dtype(op, "gradient dtype must match the parameter (group " + std::to_string(gi) + ", parameter " +
                            std::to_string(pi) + ")", {{"param", &p}, {"grad", &g}});
      if (g.shape() != p.shape())
        throw_shape(op, "gradient shape must match the parameter (group " + std::to_string(gi) + ", parameter " +
                            std::to_string(pi) + ")", {{"param", &p}, {"grad", &g}});
      g = g.contiguous();
      if (g.shares_storage(p)) g = g.clone();  // kernels take __restrict pointers
      Tensor w = p.is_contiguous() ? p : p.detach().contiguous();
      fn(grp, state_[gi][pi], w, g);
      if (w.shares_storage(p)) p.bump_version();
      else p.detach().copy_(w);  // copy_ bumps the version
    }
  }
  ++steps_;
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state_dict(const std::string& prefix) const {
  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back(prefix + ".step", Tensor::scalar((double)steps_, kInt64));
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const std::string gp = prefix + ".group" + std::to_string(gi);
    out.emplace_back(gp + ".lr", Tensor::scalar(groups_[gi].options.lr, kFloat64));
    out.emplace_back(gp + ".base_lr", Tensor::scalar(groups_[gi].base_lr, kFloat64));
    const auto names = buffer_names(groups_[gi]);
    for (size_t pi = 0; pi < groups_[gi].params.size(); ++pi) {
      const ParamState& st = state_[gi][pi];
      if (st.step == 0) continue;
      const std::string pp = gp + ".param" + std::to_string(pi);
      Tensor s = Tensor::scalar(0.0, kInt64);
      s.data_ptr<int64_t>()[0] = st.step;  // exact for any int64
      out.emplace_back(pp + ".step", s);
      for (size_t k = 0; k < 2 && k < names.size(); ++k)
        if (st.buf[k].defined()) out.emplace_back(pp + "." + names[k], st.buf[k].detach().clone());
    }
  }
  return out;
}

void Optimizer::load_state_dict(const std::vector<std::pair<std::string, Tensor>>& state, const std::string& prefix) {
  const std::string op = std::string(name()) + ".load_state_dict";
  auto fail = [&](const std::string& entry, const std::string& what) {
    throw std::invalid_argument(op + ": entry '" + entry + "': " + what);
  };
  auto scalar_of = [&](const std::string& entry, const Tensor& t, DType dt) {
    if (t.numel() != 1 || t.dtype() != dt)
      fail(entry, std::string("expected a one-element ") + dtype_name(dt) + " tensor, got " + describe(t));
  };
  // Build the new state off to the side; commit only when everything checked out.
  std::vector<std::vector<ParamState>> ns(groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) ns[gi].resize(groups_[gi].params.size());
  std::vector<double> lr(groups_.size(), NAN), base_lr(groups_.size(), NAN);
  int64_t steps = -1;
  const std::string pre = prefix + ".";
  for (const auto& [entry, t] : state) {
    if (entry.compare(0, pre.size(), pre) != 0) continue;
    if (!t.defined()) fail(entry, "undefined tensor");
    const std::string rest = entry.substr(pre.size());
    if (rest == "step") {
      scalar_of(entry, t, kInt64);
      steps = t.contiguous().data_ptr<int64_t>()[0];
      continue;
    }
    // group<G>.<field> or group<G>.param<P>.<field>
    if (rest.compare(0, 5, "group") != 0) fail(entry, "unknown entry");
    const size_t dot = rest.find('.');
    if (dot == std::string::npos) fail(entry, "unknown entry");
    const int64_t gi = parse_index(rest.substr(5, dot - 5));
    if (gi < 0) fail(entry, "bad group index");
    if (gi >= (int64_t)groups_.size())
      fail(entry, "group index out of range (optimiser has " + std::to_string(groups_.size()) + " groups)");
    const std::string field = rest.substr(dot + 1);
    if (field == "lr" || field == "base_lr") {
      scalar_of(entry, t, kFloat64);
      (field == "lr" ? lr : base_lr)[gi] = t.item();
      continue;
    }
    if (field.compare(0, 5, "param") != 0) fail(entry, "unknown entry");
    const size_t dot2 = field.find('.');
    if (dot2 == std::string::npos) fail(entry, "unknown entry");
    const int64_t pi = parse_index(field.substr(5, dot2 - 5));
    if (pi < 0) fail(entry, "bad parameter index");
    if (pi >= (int64_t)groups_[gi].params.size())
      fail(entry, "parameter index out of range (group has " + std::to_string(groups_[gi].params.size()) + ")");
    const std::string what = field.substr(dot2 + 1);
    ParamState& st = ns[gi][pi];
    if (what == "step") {
      scalar_of(entry, t, kInt64);
      st.step = t.contiguous().data_ptr<int64_t>()[0];
      if (st.step < 0) fail(entry, "negative step");
      continue;
    }
    const auto names = buffer_names(groups_[gi]);
    size_t k = 0;
    while (k < names.size() && names[k] != what) ++k;
    if (k == names.size()) fail(entry, std::string("unknown state '") + what + "' for " + name());
    const Tensor& p = groups_[gi].params[pi];
    if (t.dtype() != p.dtype() || t.shape() != p.shape())
      fail(entry, "expected " + shape_str(p.shape()) + " " + dtype_name(p.dtype()) + " like the parameter, got " +
                      describe(t));
    NoGradGuard ng;
    st.buf[k] = t.detach().clone();
  }
  if (steps < 0) fail(prefix + ".step", "missing");
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    if (std::isnan(lr[gi]) || std::isnan(base_lr[gi]))
      fail(prefix + ".group" + std::to_string(gi) + ".lr", "missing lr or base_lr for this group");
    const auto names = buffer_names(groups_[gi]);
    for (size_t pi = 0; pi < ns[gi].size(); ++pi) {
      const ParamState& st = ns[gi][pi];
      const std::string pp = prefix + ".group" + std::to_string(gi) + ".param" + std::to_string(pi);
      bool any_buf = false;
      for (size_t k = 0; k < names.size(); ++k) {
        any_buf = any_buf || st.buf[k].defined();
        if (st.step > 0 && !st.buf[k].defined()) fail(pp + "." + names[k], "missing");
      }
      if (any_buf && st.step == 0) fail(pp + ".step", "missing");
    }
  }
  state_ = std::move(ns);
  steps_ = steps;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    groups_[gi].options.lr = lr[gi];
    groups_[gi].base_lr = base_lr[gi];
  }
}

// ---------------------------------------------------------------------------------------
// SGD
// ---------------------------------------------------------------------------------------

SGD::SGD(const std::vector<Tensor>& params, const OptimOptions& options) : SGD(std::vector<ParamGroup>{{params}}, options) {}
SGD::SGD(const std::vector<ParamGroup>& groups, const OptimOptions& options) : Optimizer(options) {
  // Groups are added here (not in the base constructor) so name() and the checks see SGD.
  for (const auto& g : groups) add_param_group(g);
  for (size_t i = 0; i < groups_.size(); ++i)
    if (groups_[i].options.nesterov && (groups_[i].options.momentum <= 0.0 || groups_[i].options.dampening != 0.0))
      throw std::invalid_argument("SGD: nesterov needs momentum > 0 and dampening = 0 (param group " +
                                  (groups_[i].name.empty() ? std::to_string(i) : groups_[i].name) + ")");
}

std::vector<std::string> SGD::buffer_names(const Group& g) const {
  return g.options.momentum != 0.0 ? std::vector<std::string>{"momentum_buffer"} : std::vector<std::string>{};
}

void SGD::step() {
  for_each_param("SGD.step", [&](Group& grp, ParamState& st, Tensor& p, const Tensor& g) {
    const OptimOptions& o = grp.options;
    bool first = false;
    if (o.momentum != 0.0 && !st.buf[0].defined()) {
      st.buf[0] = Tensor::empty(p.shape(), p.dtype());
      first = true;
    }
    ++st.step;
    dispatch_float(p.dtype(), "SGD.step", [&]<class T>() {
      sgd_kernel<T>(p.data_ptr<T>(), g.data_ptr<T>(), o.momentum != 0.0 ? st.buf[0].data_ptr<T>() : nullptr, p.numel(),
                    o, first);
    });
  });
}

// ---------------------------------------------------------------------------------------
// Adam / AdamW
// ---------------------------------------------------------------------------------------

Adam::Adam(const std::vector<Tensor>& params, const OptimOptions& options)
    : Adam(std::vector<ParamGroup>{{params}}, options, false) {}
Adam::Adam(const std::vector<ParamGroup>& groups, const OptimOptions& options) : Adam(groups, options, false) {}
Adam::Adam(const std::vector<ParamGroup>& groups, const OptimOptions& options, bool decoupled)
    : Optimizer(options), decoupled_(decoupled) {
  for (const auto& g : groups) add_param_group(g);
}
AdamW::AdamW(const std::vector<Tensor>& params, const OptimOptions& options)
    : Adam(std::vector<ParamGroup>{{params}}, options, true) {}
AdamW::AdamW(const std::vector<ParamGroup>& groups, const OptimOptions& options) : Adam(groups, options, true) {}

std::vector<std::string> Adam::buffer_names(const Group&) const { return {"exp_avg", "exp_avg_sq"}; }

void Adam::step() {
  const char* op = decoupled_ ? "AdamW.step" : "Adam.step";
  for_each_param(op, [&](Group& grp, ParamState& st, Tensor& p, const Tensor& g) {
    const OptimOptions& o = grp.options;
    if (!st.buf[0].defined()) {
      st.buf[0] = Tensor::zeros(p.shape(), p.dtype());
      st.buf[1] = Tensor::zeros(p.shape(), p.dtype());
    }
    ++st.step;
    const double bc1 = 1.0 - std::pow(o.beta1, (double)st.step);
    const double bc2 = 1.0 - std::pow(o.beta2, (double)st.step);
    const double step_size = o.lr / bc1, bc2_sqrt = std::sqrt(bc2);
    dispatch_float(p.dtype(), op, [&]<class T>() {
      adam_kernel<T>(p.data_ptr<T>(), g.data_ptr<T>(), st.buf[0].data_ptr<T>(), st.buf[1].data_ptr<T>(), p.numel(), o,
                     decoupled_, step_size, bc2_sqrt);
    });
  });
}

}  // namespace lotgrad
