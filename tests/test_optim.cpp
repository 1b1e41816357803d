// optim/: SGD, Adam, AdamW against hand-computed steps, convergence (convex quadratic,
// Rosenbrock), param groups, schedules, clipping, finite checks, and bit-exact resume
// through a core/io checkpoint.
#include <doctest/doctest.h>
#include <lotgrad/lotgrad.h>

#include "support/same_bits.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <numbers>

using namespace lotgrad;
using lotgrad::testing::same_bits;

namespace {

Tensor vec(std::vector<double> v, DType dt = kFloat64) {
  const int64_t n = (int64_t)v.size();
  return Tensor::from_vector(v, {n}).to(dt);
}

// Runs 3 steps with the same gradient each time and checks each iterate.
void check_steps(Optimizer& opt, Tensor& p, const Tensor& g, const std::vector<std::array<double, 2>>& want,
                 double tol) {
  for (size_t s = 0; s < want.size(); ++s) {
    INFO(opt.name() << " step " << s + 1);
    p.set_grad(g.clone());
    opt.step();
    CHECK(p.at({0}) == doctest::Approx(want[s][0]).epsilon(tol));
    CHECK(p.at({1}) == doctest::Approx(want[s][1]).epsilon(tol));
  }
}

}  // namespace

TEST_CASE("optim: first steps match hand-computed values (SGD nesterov+wd, Adam, AdamW)") {
  // p0 = (1, -2), constant gradient (0.5, 0.25). Values from the update formulas written out
  // by hand in double precision.
  for (DType dt : {kFloat64, kFloat32}) {
    INFO(dtype_name(dt));
    const double tol = dt == kFloat64 ? 1e-12 : 2e-6;
    Tensor g = vec({0.5, 0.25}, dt);
    {
      Tensor p = vec({1.0, -2.0}, dt).requires_grad_();
      SGD opt({p}, {.lr = 0.1, .weight_decay = 0.01, .momentum = 0.9, .nesterov = true});
      check_steps(opt, p, g, {{0.9031, -2.0437}, {0.76507411, -2.10594697}, {0.590209958191, -2.184807273757}}, tol);
    }
    {
      Tensor p = vec({1.0, -2.0}, dt).requires_grad_();
      Adam opt({p}, {.lr = 0.1, .weight_decay = 0.1});
      check_steps(opt, p, g,
                  {{0.9000000016666666, -2.099999980000004},
                   {0.8000473404883316, -2.198812538982845},
                   {0.700174574814119, -2.295128687035836}},
                  tol);
    }
    {
      Tensor p = vec({1.0, -2.0}, dt).requires_grad_();
      AdamW opt({p}, {.lr = 0.1, .weight_decay = 0.1});
      check_steps(opt, p, g,
                  {{0.890000002, -2.079999996}, {0.7811000039800006, -2.1591999920399996},
                   {0.6732890059402005, -2.2376079881195996}},
                  tol);
    }
  }
  // Plain SGD, momentum with dampening (first step: the buffer is the raw gradient).
  Tensor p = vec({1.0, 2.0}).requires_grad_();
  SGD opt({p}, {.lr = 0.5, .momentum = 0.5, .dampening = 0.5});
  check_steps(opt, p, vec({1.0, -1.0}), {{0.5, 2.5}, {0.0, 3.0}}, 1e-15);
}

TEST_CASE("optim: step() semantics: skips params without grad, bumps versions, non-contiguous params") {
  Tensor a = vec({1.0, 2.0}).requires_grad_(), b = vec({3.0, 4.0}).requires_grad_();
  Adam opt({a, b}, {.lr = 0.1});
  a.set_grad(vec({1.0, 1.0}));
  const uint64_t va = a.version(), vb = b.version();
  opt.step();  // grad mode is on and a requires grad: the update must not record or throw
  CHECK(a.version() > va);
  CHECK(b.version() == vb);
  CHECK(b.to_vector() == std::vector<double>{3.0, 4.0});
  CHECK(a.grad_fn() == nullptr);
  auto st = opt.state_dict();
  bool has_b = false;
  for (auto& [n, t] : st) has_b = has_b || n.find("param1") != std::string::npos;
  CHECK_FALSE(has_b);  // no state for a parameter that never had a gradient
  CHECK(opt.step_count() == 1);

  // A transposed (non-contiguous) parameter is updated exactly like a contiguous copy.
  Tensor base = Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor pt = base.t();  // (3, 2) view
  Tensor pc = pt.contiguous().clone();
  REQUIRE_FALSE(pt.is_contiguous());
  Tensor grad = Tensor::from_vector(std::vector<double>{0.1, -0.2, 0.3, -0.4, 0.5, -0.6}, {3, 2});
  SGD o1({pt}, {.lr = 0.1, .momentum = 0.9}), o2({pc}, {.lr = 0.1, .momentum = 0.9});
  for (int s = 0; s < 3; ++s) {
    pt.set_grad(grad.t().contiguous().t());  // non-contiguous grad too
    pc.set_grad(grad);
    o1.step();
    o2.step();
  }
  CHECK(same_bits(pt.contiguous(), pc));
  CHECK(base.at({0, 1}) == pt.at({1, 0}));  // written through to the base storage

  // zero_grad: set_to_none drops .grad; otherwise zero-fills it.
  a.set_grad(vec({1.0, 1.0}));
  opt.zero_grad(false);
  CHECK(a.grad().to_vector() == std::vector<double>{0.0, 0.0});
  opt.zero_grad();
  CHECK_FALSE(a.grad().defined());

  // Bad gradient shape or dtype, bad options.
  a.set_grad(vec({1.0, 1.0, 1.0}));
  CHECK_THROWS_AS(opt.step(), ShapeError);
  a.set_grad(vec({1.0, 1.0}, kFloat32));
  CHECK_THROWS_AS(opt.step(), DTypeError);
  CHECK_THROWS_AS(SGD({a}, {.lr = -1.0}), std::invalid_argument);
  CHECK_THROWS_AS(SGD({a}, {.lr = 0.1, .nesterov = true}), std::invalid_argument);  // needs momentum
  CHECK_THROWS_AS(Adam({a}, {.beta1 = 1.0}), std::invalid_argument);
  CHECK_THROWS_AS(Adam({a, a}, {}), std::invalid_argument);  // the same parameter twice
  CHECK_THROWS_AS(Adam({Tensor::zeros({2}, kInt64)}, {}), DTypeError);
}

TEST_CASE("optim: convergence on a convex quadratic (gradients through autograd)") {
  // f(x) = sum a_i (x_i - c_i)^2 with curvatures a_i in [1, 10]; grads from backward().
  const int64_t n = 40;
  std::vector<double> av(n), cv(n);
  for (int64_t i = 0; i < n; ++i) {
    av[i] = 1.0 + 9.0 * (double)i / (n - 1);
    cv[i] = std::sin(1.0 + i);
  }
  Tensor a = Tensor::from_vector(av, {n}), c = Tensor::from_vector(cv, {n});
  auto run = [&](Optimizer& opt, Tensor& x, int steps) {
    for (int s = 0; s < steps; ++s) {
      opt.zero_grad();
      Tensor d = sub(x, c);
      Tensor f = mul(a, mul(d, d));
      f.backward(Tensor::ones({n}, kFloat64));
      opt.step();
    }
    double err = 0;
    for (int64_t i = 0; i < n; ++i) err = std::max(err, std::fabs(x.at({i}) - cv[i]));
    return err;
  };
  {
    Tensor x = Tensor::zeros({n}, kFloat64).requires_grad_();
    SGD opt({x}, {.lr = 0.02, .momentum = 0.9, .nesterov = true});
    CHECK(run(opt, x, 300) < 1e-8);
  }
  {
    Tensor x = Tensor::zeros({n}, kFloat64).requires_grad_();
    Adam opt({x}, {.lr = 0.05});
    LRScheduler sched(opt, cosine_decay(1500, 0.0));
    double err = 0;
    for (int s = 0; s < 1500; ++s) {
      err = run(opt, x, 1);
      sched.step();
    }
    CHECK(err < 1e-4);
  }
  {
    Tensor x = Tensor::zeros({n}, kFloat32).requires_grad_();
    Tensor a32 = a.to(kFloat32), c32 = c.to(kFloat32);
    AdamW opt({x}, {.lr = 0.02, .weight_decay = 0.0});
    LRScheduler sched(opt, warmup_cosine(50, 2000, 0.0, 0.0));
    for (int s = 0; s < 2000; ++s) {
      opt.zero_grad();
      Tensor d = sub(x, c32);
      mul(a32, mul(d, d)).backward(Tensor::ones({n}));
      opt.step();
      sched.step();
    }
    for (int64_t i = 0; i < n; ++i) CHECK(x.at({i}) == doctest::Approx(cv[i]).epsilon(1e-3));
  }
}

TEST_CASE("optim: convergence on Rosenbrock (hand-written gradient)") {
  // f(x, y) = (1 - x)^2 + 100 (y - x^2)^2, minimum at (1, 1), start (-1.5, 2).
  auto rosen_grad = [](const Tensor& p) {
    const double x = p.at({0}), y = p.at({1});
    return vec({-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)});
  };
  auto solve = [&](Optimizer& opt, Tensor& p, int steps) {
    for (int s = 0; s < steps; ++s) {
      p.set_grad(rosen_grad(p));
      opt.step();
    }
    return std::max(std::fabs(p.at({0}) - 1.0), std::fabs(p.at({1}) - 1.0));
  };
  Tensor p1 = vec({-1.5, 2.0}).requires_grad_();
  Adam adam({p1}, {.lr = 0.02});
  CHECK(solve(adam, p1, 5000) < 1e-6);
  Tensor p2 = vec({-1.5, 2.0}).requires_grad_();
  SGD sgd({p2}, {.lr = 5e-4, .momentum = 0.9, .nesterov = true});
  CHECK(solve(sgd, p2, 5000) < 1e-3);
}

TEST_CASE("optim: param groups: per-group options and decay exclusion") {
  Tensor w = Tensor::full({2, 3}, 1.0, kFloat64).requires_grad_();
  Tensor bias = Tensor::full({3}, 1.0, kFloat64).requires_grad_();
  Tensor gain = Tensor::full({3}, 1.0, kFloat64).requires_grad_();
  Tensor emb = Tensor::full({4, 3}, 1.0, kFloat64).requires_grad_();
  auto groups = decay_groups({{"fc.weight", w}, {"fc.bias", bias}, {"ln.weight", gain}, {"tok_embed.weight", emb}},
                             {"bias", "norm", "embed"});
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].params.size() == 1);  // only fc.weight decays
  CHECK(groups[1].params.size() == 3);
  AdamW opt(groups, {.lr = 0.1, .weight_decay = 0.5});
  CHECK(opt.param_groups()[1].options.weight_decay == 0.0);
  CHECK(opt.param_groups()[1].options.lr == 0.1);  // inherited
  for (int s = 0; s < 3; ++s) {
    for (Tensor t : {w, bias, gain, emb}) t.set_grad(Tensor::zeros(t.shape(), kFloat64));
    opt.step();
  }
  // Zero gradients: Adam's update is 0, so only decoupled decay moves the weights.
  CHECK(w.at({0, 0}) == doctest::Approx(std::pow(1.0 - 0.1 * 0.5, 3)).epsilon(1e-14));
  for (Tensor t : {bias, gain, emb}) CHECK(t.to_vector() == std::vector<double>(t.numel(), 1.0));

  // Per-group lr and momentum overrides.
  Tensor u = vec({1.0}).requires_grad_(), v = vec({1.0}).requires_grad_();
  SGD sgd({ParamGroup{{u}}, ParamGroup{{v}, {.lr = 0.01, .momentum = 0.0}, "slow"}}, {.lr = 0.1, .momentum = 0.9});
  u.set_grad(vec({1.0}));
  v.set_grad(vec({1.0}));
  sgd.step();
  CHECK(u.item() == doctest::Approx(0.9));
  CHECK(v.item() == doctest::Approx(0.99));
  CHECK(sgd.param_groups()[1].name == "slow");
}

TEST_CASE("schedule: values at chosen steps and application to groups") {
  auto near = [](double a, double b) { return std::fabs(a - b) < 1e-12; };
  Schedule w = linear_warmup(10, 0.1);
  CHECK(near(w(0), 0.1));
  CHECK(near(w(5), 0.55));
  CHECK(near(w(10), 1.0));
  CHECK(near(w(1000), 1.0));
  CHECK(near(w(-3), 0.1));
  Schedule c = cosine_decay(100, 0.1);
  CHECK(near(c(0), 1.0));
  CHECK(near(c(50), 0.55));
  CHECK(near(c(25), 0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi / 4))));
  CHECK(near(c(100), 0.1));
  CHECK(near(c(500), 0.1));
  Schedule l = linear_decay(100);
  CHECK(near(l(25), 0.75));
  CHECK(near(l(100), 0.0));
  Schedule r = inverse_sqrt(100);
  CHECK(near(r(0), 1.0));
  CHECK(near(r(300), 0.5));
  CHECK(near(constant_schedule(0.3)(77), 0.3));
  CHECK(near(Schedule()(5), 1.0));
  Schedule wc = warmup_cosine(10, 100);
  Schedule wt = warmup_then(10, 0.0, cosine_decay(90));
  for (int64_t s : {0, 5, 10, 55, 100, 150}) CHECK(near(wc(s), wt(s)));
  CHECK(near(wc(0), 0.0));
  CHECK(near(wc(5), 0.5));
  CHECK(near(wc(10), 1.0));
  CHECK(near(wc(55), 0.5));
  CHECK(near(wc(100), 0.0));
  // Warm-up then inverse square root: the classic peak * sqrt(W / t) for t >= W.
  Schedule wi = warmup_then(100, 0.0, inverse_sqrt(100));
  CHECK(near(wi(50), 0.5));
  CHECK(near(wi(400), 0.5));
  CHECK(near(wi.lr_at(400, 2e-3), 1e-3));
  CHECK_THROWS_AS(cosine_decay(0), std::invalid_argument);
  CHECK_THROWS_AS(linear_warmup(10, 1.5), std::invalid_argument);
  CHECK_THROWS_AS(warmup_cosine(10, 10), std::invalid_argument);

  // Each group's base lr is scaled by the same factor.
  Tensor a = vec({1.0}).requires_grad_(), b = vec({1.0}).requires_grad_();
  SGD opt({ParamGroup{{a}}, ParamGroup{{b}, {.lr = 0.01}}}, {.lr = 0.1});
  LRScheduler sched(opt, wc);
  CHECK(opt.param_groups()[0].options.lr == 0.0);
  for (int s = 0; s < 55; ++s) sched.step();
  CHECK(sched.position() == 55);
  CHECK(near(opt.param_groups()[0].options.lr, 0.05));
  CHECK(near(opt.param_groups()[1].options.lr, 0.005));
  CHECK(opt.param_groups()[1].base_lr == 0.01);
  apply_schedule(opt, wc, 10);
  CHECK(near(opt.param_groups()[0].options.lr, 0.1));
}

TEST_CASE("clip: clip_grad_norm_ returns the total norm and scales correctly") {
  Tensor a = vec({0.0, 0.0}).requires_grad_(), b = vec({0.0}).requires_grad_(), c = vec({1.0}).requires_grad_();
  auto set = [&] {
    a.set_grad(vec({3.0, 4.0}));
    b.set_grad(vec({12.0}));
  };
  set();
  CHECK(grad_norm({a, b, c}) == 13.0);  // c has no grad and is skipped
  CHECK(grad_norm({a, b}, 1.0) == 19.0);
  CHECK(grad_norm({a, b}, INFINITY) == 12.0);
  CHECK(clip_grad_norm_({a, b, c}, 100.0) == 13.0);
  CHECK(a.grad().to_vector() == std::vector<double>{3.0, 4.0});  // under the limit: untouched
  const uint64_t v = a.grad().version();
  CHECK(clip_grad_norm_({a, b}, 6.5) == 13.0);
  const double coef = 6.5 / (13.0 + 1e-6);
  CHECK(a.grad().at({0}) == doctest::Approx(3.0 * coef).epsilon(1e-15));
  CHECK(b.grad().at({0}) == doctest::Approx(12.0 * coef).epsilon(1e-15));
  CHECK(a.grad().version() > v);
  CHECK(grad_norm({a, b}) == doctest::Approx(6.5).epsilon(1e-6));
  // A non-contiguous f32 gradient is scaled in place through its strides.
  Tensor w = Tensor::zeros({2, 3}).requires_grad_();
  Tensor gbase = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {3, 2});
  w.set_grad(gbase.t());
  CHECK(clip_grad_norm_({w}, 1.0) == doctest::Approx(std::sqrt(91.0)).epsilon(1e-7));
  CHECK(gbase.at({2, 1}) == doctest::Approx(6.0 / std::sqrt(91.0)).epsilon(1e-6));
  // Non-finite totals.
  a.set_grad(vec({NAN, 1.0}));
  CHECK(std::isnan(grad_norm({a})));
  CHECK_THROWS_AS(clip_grad_norm_({a}, 1.0, 2.0, true), NonFiniteError);

  // The norm is bitwise the same for any thread count (fixed blocks summed in order).
  Generator gen(7);
  Tensor big = Tensor::zeros({300, 400}).requires_grad_();
  big.set_grad(randn({300, 400}, gen));
  const int nt = get_num_threads();
  set_num_threads(1);
  const double n1 = grad_norm({big});
  set_num_threads(2);
  const double n2 = grad_norm({big});
  set_num_threads(nt);
  CHECK(n1 == n2);
  double ref = 0;
  for (double x : big.grad().to_vector()) ref += x * x;
  CHECK(n1 == doctest::Approx(std::sqrt(ref)).epsilon(1e-12));
}

TEST_CASE("clip: check_finite names the parameter and the first bad index") {
  Tensor w = Tensor::zeros({3, 4}).requires_grad_(), b = Tensor::zeros({4}).requires_grad_();
  std::vector<std::string> names = {"fc.weight", "fc.bias"};
  CHECK_NOTHROW(check_finite({w, b}, names));
  Tensor g = Tensor::zeros({3, 4});
  {
    NoGradGuard ng;
    g.select(0, 2).select(0, 3).fill_(INFINITY);  // later
    g.select(0, 1).select(0, 2).fill_(NAN);       // first in row-major order
  }
  w.set_grad(g);
  auto r = find_nonfinite({w, b}, names);
  REQUIRE(r.has_value());
  CHECK(r->name == "fc.weight");
  CHECK(r->in_grad);
  CHECK(r->index == Shape{1, 2});
  CHECK(r->flat_index == 6);
  CHECK(std::isnan(r->value));
  try {
    check_finite({w, b}, names);
    FAIL("expected NonFiniteError");
  } catch (const NonFiniteError& e) {
    const std::string m = e.what();
    INFO(m);
    CHECK(m.find("fc.weight") != std::string::npos);
    CHECK(m.find("gradient") != std::string::npos);
    CHECK(m.find("(1, 2)") != std::string::npos);
    CHECK(m.find("nan") != std::string::npos);
  }
  CHECK_NOTHROW(check_finite({w, b}, names, FiniteCheck::values));
  {
    NoGradGuard ng;
    b.select(0, 3).fill_(-INFINITY);
  }
  auto rv = find_nonfinite({w, b}, names, FiniteCheck::values);
  REQUIRE(rv.has_value());
  CHECK(rv->name == "fc.bias");
  CHECK_FALSE(rv->in_grad);
  CHECK(rv->index == Shape{3});
  CHECK(rv->message().find("-inf") != std::string::npos);
  // Without names the position is reported; a large tensor is scanned in blocks.
  Tensor big = Tensor::zeros({100000});
  {
    NoGradGuard ng;
    big.select(0, 99999).fill_(NAN);
    big.select(0, 70001).fill_(INFINITY);
  }
  auto rb = find_nonfinite({b.detach().clone().fill_(0), big});
  REQUIRE(rb.has_value());
  CHECK(rb->name == "#1");
  CHECK(rb->flat_index == 70001);
}

namespace {

// A small "model": parameters (one large enough to be updated in parallel) whose gradients
// are a deterministic function of their values and the step; one parameter only gets a
// gradient from step 3 on (lazy state).
struct Toy {
  std::vector<Tensor> params;
  explicit Toy(uint64_t seed) {
    Generator gen(seed);
    params = {randn({200, 210}, gen).requires_grad_(), randn({210}, gen).requires_grad_(),
              randn({5, 3}, gen, kFloat64).requires_grad_()};
  }
  void grads(int64_t step) {
    for (size_t k = 0; k < params.size(); ++k) {
      Tensor& p = params[k];
      if (k == 2 && step < 3) {
        p.zero_grad();
        continue;
      }
      Tensor g = Tensor::empty(p.shape(), p.dtype());
      dispatch_float(p.dtype(), "toy", [&]<class T>() {
        const T* x = p.data_ptr<T>();
        T* d = g.data_ptr<T>();
        for (int64_t i = 0; i < p.numel(); ++i) d[i] = (T)(std::sin((double)x[i] * 3.0 + 0.1 * step) + 0.01 * (i % 13));
      });
      p.set_grad(g);
    }
  }
};

using MakeOpt = std::function<std::unique_ptr<Optimizer>(std::vector<Tensor>&)>;

void check_resume(const MakeOpt& make, const char* label) {
  INFO(label);
  const int total = 12, cut = 5;
  const Schedule sched_fn = warmup_cosine(3, total, 0.1, 0.05);
  auto train_step = [&](Toy& m, Optimizer& opt, LRScheduler& sched, int64_t step) {
    m.grads(step);
    clip_grad_norm_(m.params, 5.0);
    opt.step();
    sched.step();
  };
  // Uninterrupted run.
  Toy ref(11);
  auto opt_ref = make(ref.params);
  LRScheduler sched_ref(*opt_ref, sched_fn);
  for (int s = 0; s < total; ++s) train_step(ref, *opt_ref, sched_ref, s);

  // Interrupted run: train to `cut`, checkpoint everything to bytes, rebuild from scratch.
  std::string bytes;
  {
    Toy m(11);
    auto opt = make(m.params);
    LRScheduler sched(*opt, sched_fn);
    for (int s = 0; s < cut; ++s) train_step(m, *opt, sched, s);
    NamedTensors ck;
    for (size_t k = 0; k < m.params.size(); ++k) ck.emplace_back("model.p" + std::to_string(k), m.params[k]);
    for (auto& e : opt->state_dict()) ck.push_back(e);
    for (auto& e : sched.state_dict()) ck.push_back(e);
    bytes = checkpoint_to_bytes(ck, {{"optimizer", opt->name()}, {"step", std::to_string(cut)}});
  }
  Checkpoint ck = checkpoint_from_bytes(bytes);
  CHECK(ck.contains("optim.group0.param0.step"));
  Toy m(999);  // different init: everything must come from the checkpoint
  for (size_t k = 0; k < m.params.size(); ++k) {
    NoGradGuard ng;
    m.params[k].copy_(ck.at("model.p" + std::to_string(k)));
  }
  auto opt = make(m.params);
  LRScheduler sched(*opt, sched_fn);
  opt->load_state_dict(ck.tensors);
  sched.load_state_dict(ck.tensors);
  CHECK(opt->step_count() == cut);
  CHECK(sched.position() == cut);
  for (int s = cut; s < total; ++s) train_step(m, *opt, sched, s);
  for (size_t k = 0; k < m.params.size(); ++k) CHECK(same_bits(m.params[k], ref.params[k]));
  auto sa = opt->state_dict(), sb = opt_ref->state_dict();
  REQUIRE(sa.size() == sb.size());
  for (size_t k = 0; k < sa.size(); ++k) {
    CHECK(sa[k].first == sb[k].first);
    CHECK(same_bits(sa[k].second, sb[k].second));
  }
}

}  // namespace

TEST_CASE("optim: state round trip through a checkpoint continues bit-identically") {
  check_resume([](std::vector<Tensor>& p) -> std::unique_ptr<Optimizer> {
    return std::make_unique<AdamW>(std::vector<ParamGroup>{{{p[0], p[2]}}, {{p[1]}, {.weight_decay = 0.0}}},
                                   OptimOptions{.lr = 1e-2, .weight_decay = 0.1});
  }, "AdamW");
  check_resume([](std::vector<Tensor>& p) -> std::unique_ptr<Optimizer> {
    return std::make_unique<Adam>(p, OptimOptions{.lr = 1e-2, .weight_decay = 1e-3});
  }, "Adam");
  check_resume([](std::vector<Tensor>& p) -> std::unique_ptr<Optimizer> {
    return std::make_unique<SGD>(p, OptimOptions{.lr = 1e-2, .weight_decay = 1e-3, .momentum = 0.9, .nesterov = true});
  }, "SGD");
}

TEST_CASE("optim: state_dict names and load_state_dict validation") {
  Tensor a = vec({1.0, 2.0}).requires_grad_(), b = vec({3.0}).requires_grad_();
  Adam opt({a, b}, {.lr = 0.1});
  a.set_grad(vec({1.0, 1.0}));
  b.set_grad(vec({1.0}));
  opt.step();
  std::vector<std::string> names;
  for (auto& [n, t] : opt.state_dict()) names.push_back(n);
  const std::vector<std::string> want = {"optim.step",
                                         "optim.group0.lr",
                                         "optim.group0.base_lr",
                                         "optim.group0.param0.step",
                                         "optim.group0.param0.exp_avg",
                                         "optim.group0.param0.exp_avg_sq",
                                         "optim.group0.param1.step",
                                         "optim.group0.param1.exp_avg",
                                         "optim.group0.param1.exp_avg_sq"};
  CHECK(names == want);
  auto st = opt.state_dict();
  Adam fresh({a, b}, {.lr = 0.1});
  CHECK_NOTHROW(fresh.load_state_dict(st));
  // Wrong shape, unknown entry, out-of-range index, missing step: all refused, state unchanged.
  auto bad = st;
  bad[4].second = vec({1.0, 2.0, 3.0});
  CHECK_THROWS_AS(fresh.load_state_dict(bad), std::invalid_argument);
  bad = st;
  bad.emplace_back("optim.group0.param0.momentum_buffer", vec({0.0, 0.0}));
  CHECK_THROWS_AS(fresh.load_state_dict(bad), std::invalid_argument);
  bad = st;
  bad.emplace_back("optim.group3.lr", Tensor::scalar(1.0, kFloat64));
  CHECK_THROWS_AS(fresh.load_state_dict(bad), std::invalid_argument);
  bad = st;
  bad.erase(bad.begin());
  CHECK_THROWS_AS(fresh.load_state_dict(bad), std::invalid_argument);
  bad = st;
  bad.erase(bad.begin() + 5);  // exp_avg_sq of param0 missing
  CHECK_THROWS_AS(fresh.load_state_dict(bad), std::invalid_argument);
  CHECK(fresh.step_count() == 1);
  // Entries under another prefix are ignored; a custom prefix works.
  SGD sgd({a}, {.lr = 0.1, .momentum = 0.9});
  auto s2 = sgd.state_dict("opt2");
  s2.emplace_back("model.w", vec({1.0}));
  CHECK_NOTHROW(sgd.load_state_dict(s2, "opt2"));
}
