// DeltaNet: the chunked delta-rule op (ops/delta_rule.h) against the plain recurrence (values
// and gradients, every chunk size, chunks that do not divide n, the blocked solve at C = 64),
// f64 gradient checks (views, a tensor used twice), f32, thread-count independence, the
// memory the backward keeps, refusals; then the deltanet mechanism through
// MultiHeadAttention: gradient check, causality, padding (causal and two-sided), chunk 1,
// neg_eigval reaching β > 1, the L2-norm ε convention, and the probe's map.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/lotgrad.h>
#include <lotgrad/ops/delta_rule.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {

// DeltaNet-shaped operands (f64 leaves): q random, k with unit rows, v random, β in (0, beta_max).
struct Operands {
  Tensor q, k, v, beta;
  V all() const { return {q, k, v, beta}; }
};
Operands operands(int64_t B, int64_t H, int64_t n, int64_t dk, int64_t dv, uint64_t seed, double beta_max = 2.0,
                  DType dt = kFloat64) {
  Generator g(seed);
  Operands o;
  NoGradGuard ng;
  o.q = randn({B, H, n, dk}, g, dt);
  const Tensor k = randn({B, H, n, dk}, g, dt);
  o.k = div(k, sqrt(sum(mul(k, k), {-1}, true)));
  o.v = randn({B, H, n, dv}, g, dt);
  o.beta = mul(rand({B, H, n}, g, dt), beta_max);
  for (Tensor* t : {&o.q, &o.k, &o.v, &o.beta}) t->requires_grad_();
  return o;
}

// Output and the gradients of q, k, v, β for a seeded random upstream gradient.
V run(const std::function<Tensor(const V&)>& f, const V& in) {
  for (const auto& t : in) t.zero_grad();
  Tensor out = f(in);
  Generator g(77);
  out.backward(randn(out.shape(), g, out.dtype()));
  V r{out.detach()};
  for (const auto& t : in) r.push_back(t.grad().defined() ? t.grad() : Tensor::zeros(t.shape(), t.dtype()));
  return r;
}

Tensor chunked(const V& x, int64_t C) { return delta_rule(x[0], x[1], x[2], x[3], C); }
Tensor recurrent(const V& x) { return delta_rule_recurrent(x[0], x[1], x[2], x[3]); }

// Largest |x|, +inf when an entry is not finite.
double max_abs(const Tensor& x) {
  double m = 0;
  for (double v : x.to_vector()) m = std::isfinite(v) ? std::max(m, std::abs(v)) : INFINITY;
  return m;
}

void check_chunked_vs_recurrent(const Operands& o, int64_t C, double tol, bool grads) {
  INFO("n " << o.q.size(2) << ", dk " << o.q.size(3) << ", dv " << o.v.size(3) << ", chunk " << C);
  if (!grads) {
    NoGradGuard ng;
    const Tensor a = chunked(o.all(), C), b = recurrent(o.all());
    CHECK(max_abs(b) > 0.1);
    CHECK(max_abs(sub(a, b)) < tol);
    return;
  }
  const V a = run([&](const V& x) { return chunked(x, C); }, o.all()), b = run(recurrent, o.all());
  const char* names[] = {"output", "dq", "dk", "dv", "dbeta"};
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(names[i]);
    CHECK(max_abs(b[i]) > 1e-3);  // not a comparison of zeros
    CHECK(max_abs(sub(a[i], b[i])) < tol);
  }
}

}  // namespace

TEST_CASE("delta_rule: the chunked form equals the recurrence for every chunk size") {
  for (int64_t n : {7, 13, 20}) {
    const Operands o = operands(2, 2, n, 5, 3, 100 + n);
    for (int64_t C : {1, 2, 3, 4, 5, 6, 8, 16, 19, 20, 64}) check_chunked_vs_recurrent(o, C, 1e-10, false);
  }
  // β up to 1 and keys of any norm (not DeltaNet-shaped, still the same algebra).
  Generator g(5);
  Operands o = operands(1, 3, 11, 4, 6, 6, 1.0);
  o.k = mul(randn({1, 3, 11, 4}, g, kFloat64), 0.4);
  for (int64_t C : {1, 3, 11}) check_chunked_vs_recurrent(o, C, 1e-10, false);
}

TEST_CASE("delta_rule: long sequence, C = 64 (blocked solve), widths past one vector") {
  // dk 33: four-vector blocks plus a scalar tail in f64; dv 40: a four-vector block plus one.
  const Operands o = operands(1, 2, 130, 33, 40, 11);
  for (int64_t C : {64, 17}) check_chunked_vs_recurrent(o, C, 1e-10, false);
}

TEST_CASE("delta_rule: chunked gradients equal the recurrence's gradients") {
  check_chunked_vs_recurrent(operands(2, 1, 13, 4, 5, 21), 4, 1e-10, true);
  check_chunked_vs_recurrent(operands(1, 2, 9, 3, 2, 22), 1, 1e-10, true);
  check_chunked_vs_recurrent(operands(1, 1, 130, 12, 9, 23), 64, 1e-9, true);
  check_chunked_vs_recurrent(operands(1, 1, 40, 17, 33, 24), 20, 1e-9, true);
}

GradcheckOptions few_checks() {
  GradcheckOptions opt;
  opt.max_checks_per_input = 24;
  return opt;
}

TEST_CASE("delta_rule: gradient check") {
  const Operands o = operands(2, 2, 9, 4, 3, 31);
  for (int64_t C : {1, 4, 9}) {
    INFO("chunk " << C);
    CHECK_GRAD([&](const V& x) { return chunked(x, C); }, o.all(), few_checks());
  }
}

TEST_CASE("delta_rule: gradient check with views as inputs") {
  const Tensor q = noncontig_leaf({1, 2, 7, 3}, 32), k = noncontig_leaf({1, 2, 7, 3}, 33, 0.5);
  const Tensor v = leaf({1, 7, 2, 4}, 34).detach().transpose(1, 2).requires_grad_();  // (1, 2, 7, 4), strided
  const Tensor b = leaf({1, 2, 14}, 35, 0.3, 0.8).detach().slice(-1, 0, 14, 2).requires_grad_();
  CHECK_FALSE(q.is_contiguous());
  CHECK_FALSE(v.is_contiguous());
  CHECK_FALSE(b.is_contiguous());
  CHECK_GRAD([](const V& x) { return delta_rule(x[0], x[1], x[2], x[3], 3); }, V{q, k, v, b}, few_checks());
}

TEST_CASE("delta_rule: one tensor as queries and keys") {
  const Tensor qk = leaf({1, 2, 8, 3}, 36, 0.5), v = leaf({1, 2, 8, 3}, 37), b = leaf({1, 2, 8}, 38, 0.2, 0.7);
  auto f = [](const V& x) { return delta_rule(x[0], x[0], x[1], x[2], 3); };
  CHECK_GRAD(f, V{qk, v, b}, few_checks());
  // and the same gradients as through the recurrence
  const V a = run(f, {qk, v, b});
  const V r = run([](const V& x) { return delta_rule_recurrent(x[0], x[0], x[1], x[2]); }, {qk, v, b});
  for (size_t i = 0; i < a.size(); ++i) CHECK(max_abs(sub(a[i], r[i])) < 1e-10);
}

TEST_CASE("delta_rule: f32 agrees with f64, and thread counts give the same bits") {
  const Operands o = operands(2, 3, 70, 16, 16, 41);
  const V ref = run([](const V& x) { return chunked(x, 32); }, o.all());
  V o32;
  for (const auto& t : o.all()) o32.push_back(t.detach().to(kFloat32).requires_grad_());
  const V f = run([](const V& x) { return chunked(x, 32); }, o32);
  for (size_t i = 0; i < f.size(); ++i) {
    CHECK(f[i].dtype() == kFloat32);
    CHECK(max_abs(sub(f[i].to(kFloat64), ref[i])) < 1e-3 * (1 + max_abs(ref[i])));
  }
  const int saved = get_num_threads();
  set_num_threads(1);
  const V one = run([](const V& x) { return chunked(x, 32); }, o32);
  set_num_threads(2);
  const V two = run([](const V& x) { return chunked(x, 32); }, o32);
  set_num_threads(saved);
  for (size_t i = 0; i < one.size(); ++i) CHECK(one[i].to_vector() == two[i].to_vector());
}

TEST_CASE("delta_rule: the backward keeps the chunk states, not one per step") {
  // B·H = 2, n = 512, d = 16, C = 64: the node holds the 8 incoming states per head
  // (8·16·16 values) beside the output, where per-step states would be 512·16·16.
  const Operands o = operands(1, 2, 512, 16, 16, 51);
  const int64_t C = 64, before = storage_bytes_in_use();
  Tensor out = delta_rule(o.q, o.k, o.v, o.beta, C);
  const int64_t held = storage_bytes_in_use() - before;
  const int64_t states = delta_rule_state_bytes(o.q, o.v, C);
  CHECK(states == 2 * 8 * 16 * 16 * 8);
  CHECK(held == (int64_t)out.numel() * 8 + states);  // inputs are contiguous: saved without copies
  out = Tensor();
  CHECK(storage_bytes_in_use() == before);  // the graph went with the output
}

TEST_CASE("delta_rule: bad operands are refused with the op, the rule and every shape") {
  const Operands o = operands(1, 2, 5, 4, 3, 61);
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  const std::string m1 = message([&] { delta_rule(o.q, o.k.narrow(3, 0, 3), o.v, o.beta); });
  CHECK(m1.find("delta_rule") != std::string::npos);
  CHECK(m1.find("q (1, 2, 5, 4) f64") != std::string::npos);
  CHECK(m1.find("k (1, 2, 5, 3) f64") != std::string::npos);
  CHECK(m1.find("v (1, 2, 5, 3) f64") != std::string::npos);
  CHECK(m1.find("beta (1, 2, 5) f64") != std::string::npos);
  CHECK(message([&] { delta_rule(o.q, o.k, o.v.narrow(2, 0, 4), o.beta); }).find("v (1, 2, 4, 3)") != std::string::npos);
  CHECK(message([&] { delta_rule(o.q, o.k, o.v, o.beta.unsqueeze(-1)); }).find("beta (1, 2, 5, 1)") != std::string::npos);
  CHECK(message([&] { delta_rule(o.q, o.k, o.v, o.beta.to(kFloat32)); }).find("one float dtype") != std::string::npos);
  CHECK(message([&] { delta_rule(o.q, o.k, o.v, o.beta, 0); }) == "delta_rule: chunk must be >= 1, got 0");
  CHECK(message([&] { delta_rule_recurrent(o.q, o.q, o.q, o.beta.narrow(2, 0, 2)); }).find("delta_rule_recurrent") !=
        std::string::npos);
}
