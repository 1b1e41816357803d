// Run under mpirun (tests/mpi_test.sh, 2 and 4 ranks): the sums of dist/comm.h equal the sums
// of the values every rank contributes, and GradReducer leaves in .grad the sum over ranks of
// each parameter's gradient, bucket sizes small enough to give several buckets. Exits 1 with
// a message naming the rank and the value on a mismatch.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <lotgrad/lotgrad.h>

using namespace lotgrad;

namespace {
int g_fail = 0;
void expect(bool ok, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "rank %d: %s\n", dist::Comm::world().rank(), what.c_str());
  g_fail = 1;
}
// A value every rank can compute for rank r and element i (exact in f32).
double value(int r, int64_t i) { return (double)((r + 1) * 1000 + i % 997) * 0.25; }
double sum_of(int size, int64_t i) {
  double s = 0;
  for (int r = 0; r < size; ++r) s += value(r, i);
  return s;
}

void check_sums(dist::Comm& c) {
  const int64_t n = 100003;  // not a multiple of anything MPI might chunk by
  std::vector<double> d(n);
  std::vector<float> f(n);
  for (int64_t i = 0; i < n; ++i) d[i] = f[i] = (float)value(c.rank(), i);
  c.allreduce_sum(d.data(), n);
  dist::Request rq = c.iallreduce_sum(f.data(), n);
  while (!c.test(rq)) {}
  for (int64_t i = 0; i < n; ++i) {
    expect(d[i] == sum_of(c.size(), i), "allreduce_sum f64 element " + std::to_string(i) + ": " + std::to_string(d[i]));
    expect(f[i] == (float)sum_of(c.size(), i), "iallreduce_sum f32 element " + std::to_string(i) + ": " + std::to_string(f[i]));
    if (g_fail) return;
  }
  const std::vector<int> odd = c.ranks_where(c.rank() % 2 == 1);
  for (int r = 0, k = 0; r < c.size(); ++r)
    if (r % 2 == 1) expect(k < (int)odd.size() && odd[k++] == r, "ranks_where: rank " + std::to_string(r) + " missing");
  expect(c.same_everywhere(42), "same_everywhere(42) is false");
  expect(c.same_everywhere((uint64_t)c.rank()) == (c.size() == 1), "same_everywhere(rank) is wrong");
}

// Parameters a (3, 5), b (7,), c (2, 2) (used on rank 1 only) and u (never used): the
// gradient of sum(a * (r + 1)) + sum(b * b * (r + 1)) [+ sum(c)] on rank r.
void check_reducer(dist::Comm& c) {
  // Registered c, u, a, b: buckets go in reverse order (b, a, then c and u), and start in that
  // order, so b's and a's can start during backward while c's and u's wait for finish().
  std::vector<std::pair<std::string, Tensor>> ps = {
      {"c", Tensor::ones({2, 2}).requires_grad_()}, {"u", Tensor::ones({4}).requires_grad_()},
      {"a", Tensor::full({3, 5}, 1.5).requires_grad_()}, {"b", Tensor::arange(0.0, 7.0, 1.0).requires_grad_()}};
  dist::GradReducer red(c, ps, /*bucket_bytes=*/32);  // about one parameter per bucket
  expect(red.stats().buckets >= 3, "buckets: " + std::to_string(red.stats().buckets));
  for (int step = 0; step < 2; ++step) {  // twice: buffers and counts are reset between steps
    for (auto& [n, p] : ps) p.zero_grad();
    const double k = c.rank() + 1;
    Tensor& a = ps[2].second;
    Tensor& b = ps[3].second;
    Tensor loss = add(sum(mul(a, k)), sum(mul(mul(b, b), k)));
    if (c.rank() == 1) loss = add(loss, sum(ps[0].second));
    red.begin();
    loss.backward();
    red.finish();
    const double ks = c.size() * (c.size() + 1) / 2.0;  // sum over ranks of r + 1
    for (double g : a.grad().to_vector()) expect(g == ks, "grad a " + std::to_string(g));
    const std::vector<double> gb = b.grad().to_vector();
    for (int i = 0; i < 7; ++i) expect(gb[i] == 2.0 * i * ks, "grad b[" + std::to_string(i) + "] " + std::to_string(gb[i]));
    expect(ps[0].second.grad().defined() == (c.size() > 1), "grad c defined only where some rank used it");
    if (c.size() > 1)
      for (double g : ps[0].second.grad().to_vector()) expect(g == 1.0, "grad c " + std::to_string(g));
    expect(!ps[1].second.grad().defined(), "grad u (unused on every rank) is defined");
    expect(!red.local_nonfinite(), "finite gradients reported non-finite");
    expect(red.stats().started_early >= 2, "buckets started during backward: " + std::to_string(red.stats().started_early));
  }
}
}  // namespace

int main() {
  try {
    dist::Comm& c = dist::Comm::world();
    check_sums(c);
    check_reducer(c);
    if (!g_fail) std::printf("rank %d of %d: sums and gradient buckets match\n", c.rank(), c.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return g_fail;
}
