// The code of docs/tutorial_lotformer_focus.md, "Why LOTFormer cannot focus on one token":
// softmax puts almost all of a query's weight on the one key that matches it once the scores
// are sharp enough; LOTFormer's A = n Γ1 diag(1/b) Γ2 never gives any key more than
// 1/(n · min b), however sharp. The tutorial shows the regions between the snippet markers
// verbatim (tests/tutorial_docs_test.sh).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention_lotformer.h>

using namespace lotgrad;

// [snippet setup]
namespace tutorial {
// One head, n tokens of width d: random keys k_j, and each query the sharpened copy of its own
// key, q_i = beta · k_i. Every query has one matching key; the larger beta, the more its
// scores single that key out.
struct Focus {
  Tensor q, k;  // (1, 1, n, d)
};
Focus focus_input(int64_t n, int64_t d, double beta, uint64_t seed) {
  Generator g(seed);
  const Tensor k = randn({1, 1, n, d}, g);
  return {mul(k, beta / std::sqrt((double)d)), k};
}

// The largest weight a query puts on its own key (the diagonal of A), under a mechanism.
double weight_on_match(nn::AttentionMechanism& att, const Focus& f) {
  NoGradGuard ng;
  const Tensor A = att.attention_matrix(f.q, f.k, Tensor()).select(0, 0).select(0, 0);  // (n, n)
  double w = 0;
  for (int64_t i = 0; i < A.size(0); ++i) w = std::max(w, A.at({i, i}));
  return w;
}

// LOTFormer with r pivots (uniform masses b = 1/r at start) and softmax, one head each.
std::shared_ptr<nn::AttentionMechanism> mechanism(const std::string& name, int64_t r, int64_t d) {
  nn::AttentionOptions o;
  o.name = name;
  o.n_heads = 1;
  o.d_head = d;
  if (name == "lotformer") o.knobs = {{"r", (double)r}, {"eps", 0.1}, {"half_steps", 1001}, {"init_std", -1}};
  Generator g(3);
  return nn::make_attention(o, g);
}
}  // namespace tutorial
// [end setup]

// [snippet sharpen]
TEST_CASE("tutorial focus: sharper scores focus softmax on the matching key but never LOTFormer") {
  const int64_t n = 64, d = 16, r = 4;
  auto soft = tutorial::mechanism("softmax", r, d);
  auto lot = tutorial::mechanism("lotformer", r, d);
  const double bound = lot->weight_bound(n)[0];  // 1/(n · min b) = r/n with uniform masses
  CHECK(bound == doctest::Approx((double)r / n));
  std::printf("beta   softmax   lotformer   bound 1/(n min b) = %.4f\n", bound);
  double soft_last = 0;
  for (double beta : {0.5, 2.0, 8.0, 32.0}) {
    const tutorial::Focus f = tutorial::focus_input(n, d, beta, 7);
    const double ws = tutorial::weight_on_match(*soft, f), wl = tutorial::weight_on_match(*lot, f);
    std::printf("%5.1f   %7.4f   %9.4f\n", beta, ws, wl);
    CHECK(wl <= bound + 1e-5);  // however sharp the scores
    soft_last = ws;
  }
  CHECK(soft_last > 0.99);  // softmax: (nearly) all of a query's weight on its matching key
}
// [end sharpen]

// [snippet scaling]
TEST_CASE("tutorial focus: the bound halves when n doubles, unless the pivots grow with n") {
  const int64_t d = 16;
  for (int64_t n : {32, 64, 128}) {
    auto lot = tutorial::mechanism("lotformer", 4, d);
    const double bound = lot->weight_bound(n)[0];
    CHECK(bound == doctest::Approx(4.0 / n));
    CHECK(tutorial::weight_on_match(*lot, tutorial::focus_input(n, d, 32.0, 7)) <= bound + 1e-5);
  }
  // Weight 1/2 on one token out of n = 128 needs min b <= 2/n: r >= n/2 = 64 uniform pivots.
  auto wide = tutorial::mechanism("lotformer", 64, d);
  CHECK(wide->weight_bound(128)[0] == doctest::Approx(0.5));
}
// [end scaling]

// [snippet pooling]
TEST_CASE("tutorial focus: columns sum to 1 too, so mean pooling returns the mean of the values") {
  const int64_t n = 32, d = 16;
  auto lot = tutorial::mechanism("lotformer", 4, d);
  const tutorial::Focus f = tutorial::focus_input(n, d, 8.0, 11);
  Generator g(5);
  const Tensor v = randn({1, 1, n, d}, g);
  NoGradGuard ng;
  const Tensor A = lot->attention_matrix(f.q, f.k, Tensor());
  CHECK(max(abs(sub(sum(A, {-2}), 1.0))).item() < 1e-3);  // column sums (converged Sinkhorn)
  const Tensor y = lot->forward(f.q, f.k, v, Tensor());
  CHECK(max(abs(sub(mean(y, {-2}), mean(v, {-2})))).item() < 1e-3);
}
// [end pooling]
