#include "mqar.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "detail.h"

namespace lotgrad::data {

namespace {
[[noreturn]] void bad(const std::string& option, const std::string& value, const std::string& need) {
  throw std::invalid_argument("mqar: " + option + " = " + value + ": " + need);
}

int64_t context_len(const MqarOptions& o) { return 2 * o.num_kv_pairs * o.passes; }

// n distinct integers from {lo, ..., lo + pool - 1}, uniform and in random order: a partial
// Fisher-Yates shuffle over a virtual array (only the swapped cells are stored).
std::vector<token_t> sample_distinct(detail::Rng& rng, int64_t lo, int64_t pool, int64_t n) {
  std::unordered_map<int64_t, int64_t> swapped;
  auto at = [&](int64_t i) { auto it = swapped.find(i); return it == swapped.end() ? i : it->second; };
  std::vector<token_t> out((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = i + (int64_t)rng.below((uint64_t)(pool - i));
    const int64_t vi = at(i), vj = at(j);
    swapped[j] = vi;
    out[(size_t)i] = (token_t)(lo + vj);
  }
  return out;
}

// n distinct 0-based slots drawn without replacement with probabilities p, in draw order.
// Race of exponential clocks (Efraimidis & Spirakis): slot s rings at E_s / p_s, E_s ~ Exp(1);
// the order of the rings is exactly successive weighted sampling without replacement.
std::vector<int64_t> sample_slots(detail::Rng& rng, const std::vector<double>& p, int64_t n) {
  std::vector<double> ring(p.size());
  for (size_t s = 0; s < p.size(); ++s) {
    const double u = ((double)(rng.bits() >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
    ring[s] = -std::log(u) / p[s];
  }
  std::vector<int64_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](int64_t a, int64_t b) { return ring[(size_t)a] < ring[(size_t)b]; });
  order.resize((size_t)n);
  return order;
}
}  // namespace

void validate(const MqarOptions& o) {
  const auto s = [](auto v) {
    std::ostringstream os;
    os << v;
    return os.str();
  };
  if (o.num_kv_pairs < 1) bad("num_kv_pairs", s(o.num_kv_pairs), "must be >= 1");
  if (o.passes < 1) bad("passes", s(o.passes), "must be >= 1");
  if (o.seq_len < 2 || o.seq_len % 2) bad("seq_len", s(o.seq_len), "must be even and >= 2");
  if (o.vocab_size <= o.seq_len)
    bad("vocab_size", s(o.vocab_size), "must exceed seq_len = " + s(o.seq_len) + " (as zoology asserts)");
  if (context_len(o) + 2 * o.num_kv_pairs > o.seq_len)
    bad("num_kv_pairs", s(o.num_kv_pairs),
        "needs 2·num_kv_pairs·(passes + 1) = " + s(context_len(o) + 2 * o.num_kv_pairs) + " <= seq_len = " + s(o.seq_len));
  if (o.vocab_size / 2 - 1 < o.num_kv_pairs)
    bad("vocab_size", s(o.vocab_size), "has only " + s(o.vocab_size / 2 - 1) + " keys for num_kv_pairs = " + s(o.num_kv_pairs));
  if (!(o.power_a > 0.0) || !std::isfinite(o.power_a)) bad("power_a", s(o.power_a), "must be finite and > 0");
}

std::vector<double> mqar_slot_probabilities(int64_t slots, double a) {
  std::vector<double> p((size_t)slots);
  double sum = 0.0;
  for (int64_t g = 1; g <= slots; ++g) sum += p[(size_t)g - 1] = a * std::pow((double)g, a - 1.0);
  for (double& v : p) v /= sum;
  return p;
}

MqarExample mqar_example(const MqarOptions& o, int64_t index) {
  validate(o);
  detail::Rng rng(detail::subseed(o.seed ^ 0x6d716172ULL, (uint64_t)index));
  const int64_t n = o.num_kv_pairs, ctx = context_len(o), half = o.vocab_size / 2;
  const std::vector<token_t> keys = sample_distinct(rng, 1, half - 1, n);
  const std::vector<token_t> vals = sample_distinct(rng, half, o.vocab_size - half, n);
  const std::vector<int64_t> slots = sample_slots(rng, mqar_slot_probabilities((o.seq_len - ctx) / 2, o.power_a), n);
  MqarExample e;
  e.inputs.assign((size_t)o.seq_len, 0);
  e.targets.assign((size_t)o.seq_len, kMqarIgnore);
  for (int64_t p = 0; p < o.passes; ++p)
    for (int64_t j = 0; j < n; ++j) {
      e.inputs[(size_t)(p * 2 * n + 2 * j)] = keys[(size_t)j];
      e.inputs[(size_t)(p * 2 * n + 2 * j + 1)] = vals[(size_t)j];
    }
  for (int64_t j = 0; j < n; ++j) {
    const size_t pos = (size_t)(ctx + 2 * slots[(size_t)j]);
    e.inputs[pos] = keys[(size_t)j];
    e.targets[pos] = vals[(size_t)j];
  }
  if (o.random_non_queries)
    for (token_t& t : e.inputs)
      if (t == 0) t = (token_t)rng.below((uint64_t)o.vocab_size);
  return e;
}

std::vector<MqarExample> generate_mqar(int64_t count, const MqarOptions& opt, int64_t first) {
  if (count < 0) bad("count", std::to_string(count), "must be >= 0");
  validate(opt);
  return detail::generate_range(count, first, [&](int64_t i) { return mqar_example(opt, i); });
}

MqarBatch mqar_batch(const std::vector<MqarExample>& ex, const std::vector<int64_t>& indices) {
  const int64_t b = (int64_t)indices.size();
  const int64_t len = b ? (int64_t)ex.at((size_t)indices[0]).inputs.size() : 0;
  std::vector<int64_t> in, tg;
  in.reserve((size_t)(b * len));
  tg.reserve((size_t)(b * len));
  for (int64_t i : indices) {
    const MqarExample& e = ex.at((size_t)i);
    if ((int64_t)e.inputs.size() != len || e.targets.size() != e.inputs.size())
      bad("example " + std::to_string(i) + " length", std::to_string(e.inputs.size()),
          "a batch needs one length, " + std::to_string(len));
    in.insert(in.end(), e.inputs.begin(), e.inputs.end());
    tg.insert(tg.end(), e.targets.begin(), e.targets.end());
  }
  return {Tensor::from_vector(in, {b, len}), Tensor::from_vector(tg, {b, len})};
}

}  // namespace lotgrad::data
