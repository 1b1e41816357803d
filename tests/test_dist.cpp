// Data-parallel parts that one process can check (the multi-process runs are in
// tests/mpi_test.sh): shards of batches and of evaluation, and GradReducer in a world of one,
// where its sums must leave every gradient exactly as backward made it.
#include <cmath>
#include <doctest/doctest.h>
#include <numeric>

#include <lotgrad/lotgrad.h>

using namespace lotgrad;

TEST_CASE("shards split any count into contiguous parts that differ by at most one") {
  for (int64_t count = 1; count <= 5; ++count)
    for (int64_t n = count; n <= 23; ++n) {
      int64_t next = 0, lo = n, hi = 0;
      for (int64_t r = 0; r < count; ++r) {
        const data::Shard s{r, count};
        CHECK(s.begin(n) == next);
        next = s.end(n);
        lo = std::min(lo, s.end(n) - s.begin(n));
        hi = std::max(hi, s.end(n) - s.begin(n));
      }
      CHECK(next == n);
      CHECK(hi - lo <= 1);
      CHECK(lo >= 1);
    }
}

TEST_CASE("a sharded loader gives each rank its part of the same global batches") {
  data::Dataset d;
  d.name = "toy";
  d.vocab_size = 50;
  d.num_classes = 2;
  for (int i = 0; i < 37; ++i) d.examples.push_back({std::vector<data::token_t>((size_t)(1 + i % 5), (data::token_t)(1 + i)), i % 2});
  data::LoaderOptions lo;
  lo.batch_size = 10;
  lo.seed = 7;
  lo.drop_last = true;
  data::DataLoader whole(d, lo);
  std::vector<data::DataLoader> ranks;
  for (int64_t r = 0; r < 4; ++r) {
    data::LoaderOptions o = lo;
    o.shard = {r, 4};
    ranks.emplace_back(d, o);
  }
  for (int step = 0; step < 7; ++step) {  // past an epoch boundary (3 batches an epoch)
    const data::Batch b = whole.next();
    std::vector<int64_t> joined;
    for (auto& l : ranks) {
      const data::Batch p = l.next();
      CHECK(p.size() >= 2);
      joined.insert(joined.end(), p.indices.begin(), p.indices.end());
    }
    CHECK(joined == b.indices);
  }
  data::LoaderOptions o = lo;
  o.batch_size = 3;
  o.shard = {0, 4};
  CHECK_THROWS_WITH_AS(data::DataLoader(d, o), doctest::Contains("a global batch of 3 examples cannot give each of 4 ranks one"),
                       std::invalid_argument);
  o.shard = {4, 4};
  CHECK_THROWS_WITH_AS(data::DataLoader(d, o), doctest::Contains("shard 4 of 4"), std::invalid_argument);
}

TEST_CASE("sharded evaluation batches cover every example once across the ranks") {
  for (int64_t count : {1, 2, 3, 4}) {
    std::vector<int64_t> seen;
    for (int64_t r = 0; r < count; ++r)
      for (const auto& b : data::sequential_batches(23, 4, {r, count})) seen.insert(seen.end(), b.begin(), b.end());
    std::sort(seen.begin(), seen.end());
    std::vector<int64_t> all(23);
    std::iota(all.begin(), all.end(), 0);
    CHECK(seen == all);
  }
}

TEST_CASE("GradReducer in a world of one leaves the gradients bitwise as backward made them") {
  dist::Comm& c = dist::Comm::world();
  REQUIRE(c.size() == 1);
  Generator g(3);
  // Buckets in reverse order: b2 + w2 (272 bytes), w1 (512), unused (20); bucket_bytes 280.
  std::vector<std::pair<std::string, Tensor>> ps = {{"unused", randn({5}, g).requires_grad_()},
                                                    {"w1", randn({8, 16}, g).requires_grad_()},
                                                    {"w2", randn({16, 4}, g).requires_grad_()},
                                                    {"b2", randn({4}, g).requires_grad_()}};
  const Tensor x = randn({3, 8}, g);
  auto loss = [&] { return sum(mul(add(matmul(matmul(x, ps[1].second), ps[2].second), ps[3].second), 0.5)); };
  loss().backward();  // the reference gradients, without a reducer
  std::vector<std::vector<double>> want;
  for (auto& [n, p] : ps) want.push_back(p.grad().defined() ? p.grad().to_vector() : std::vector<double>{});
  {
    dist::GradReducer red(c, ps, /*bucket_bytes=*/280);
    CHECK(red.stats().buckets == 3);
    CHECK(red.stats().bytes == (8 * 16 + 1 + 16 * 4 + 4 + 2 + 5 + 1) * 4);
    for (int step = 0; step < 2; ++step) {
      for (auto& [n, p] : ps) p.zero_grad();
      red.begin();
      loss().backward();
      red.finish();
      for (size_t k = 0; k < ps.size(); ++k) {
        CAPTURE(ps[k].first);
        CHECK(ps[k].second.grad().defined() == !want[k].empty());
        if (!want[k].empty()) CHECK(ps[k].second.grad().to_vector() == want[k]);
      }
      CHECK(red.stats().started_early == 2);  // w2 + b2 and w1 during backward; "unused" only at finish
      CHECK_FALSE(red.local_nonfinite());
    }
    red.inject_nan("w2");
    for (auto& [n, p] : ps) p.zero_grad();
    red.begin();
    loss().backward();
    red.finish();
    CHECK(red.local_nonfinite());
    CHECK(std::isnan(ps[2].second.grad().to_vector()[0]));
    CHECK_THROWS_WITH_AS(red.inject_nan("nope"), doctest::Contains("no parameter 'nope'"), std::invalid_argument);
  }
  // The reducer is gone: its hooks with it (a backward now must not reach freed memory).
  for (auto& [n, p] : ps) p.zero_grad();
  loss().backward();
  CHECK(ps[1].second.grad().to_vector() == want[1]);
}
