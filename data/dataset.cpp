#include "dataset.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <stdexcept>

#include "detail.h"

namespace lotgrad::data {

std::vector<int64_t> label_counts(const Dataset& d) {
  std::vector<int64_t> c((size_t)std::max<int64_t>(d.num_classes, 0), 0);
  for (const Example& e : d.examples)
    if (e.label >= 0 && e.label < (int64_t)c.size()) ++c[(size_t)e.label];
  return c;
}

double majority_rate(const Dataset& d) {
  if (d.empty()) return 0.0;
  auto c = label_counts(d);
  int64_t m = c.empty() ? 0 : *std::max_element(c.begin(), c.end());
  return (double)m / (double)d.size();
}

static void shuffle_indices(std::vector<int64_t>& v, detail::Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

std::pair<Dataset, Dataset> split_tail(Dataset d, double frac, const std::string& second_name, uint64_t seed) {
  if (!(frac >= 0.0 && frac <= 1.0)) throw std::invalid_argument("split_tail: frac must be in [0, 1]");
  const size_t n = d.size(), k = (size_t)std::llround(frac * (double)n);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (seed != 0) {
    detail::Rng rng(detail::subseed(seed, 0xabc));
    shuffle_indices(order, rng);
  }
  Dataset a, b;
  a.vocab_size = b.vocab_size = d.vocab_size;
  a.num_classes = b.num_classes = d.num_classes;
  a.paired = b.paired = d.paired;
  a.name = d.name;
  b.name = d.name + "/" + second_name;
  a.examples.reserve(n - k);
  b.examples.reserve(k);
  for (size_t i = 0; i < n; ++i) {
    Example& e = d.examples[(size_t)order[i]];
    (i < n - k ? a : b).examples.push_back(std::move(e));
  }
  return {std::move(a), std::move(b)};
}

int64_t Batch::real_tokens() const {
  int64_t c = 0;
  for (const Tensor* m : {&mask, &mask2}) {
    if (!m->defined()) continue;
    const bool* p = m->data_ptr<bool>();
    for (int64_t i = 0, n = m->numel(); i < n; ++i) c += !p[i];
  }
  return c;
}

namespace {
// Fills (B, n) tokens and mask from one token list per row.
void fill_rows(const Dataset& d, const std::vector<int64_t>& idx, bool second, const CollateOptions& opt,
               Tensor& tokens, Tensor& mask) {
  const int64_t B = (int64_t)idx.size();
  auto seq = [&](int64_t i) -> const std::vector<token_t>& {
    const Example& e = d.examples[(size_t)idx[(size_t)i]];
    return second ? e.tokens2 : e.tokens;
  };
  int64_t n = 1;
  if (opt.pad_to > 0) {
    n = opt.pad_to;
    if (!opt.truncate)
      for (int64_t i = 0; i < B; ++i)
        if ((int64_t)seq(i).size() > n)
          throw ShapeError("collate: example " + std::to_string(idx[(size_t)i]) + " of " + d.name + " has " +
                           std::to_string(seq(i).size()) + " tokens, more than pad_to = " + std::to_string(n) +
                           " (set truncate to cut it)");
  } else {
    for (int64_t i = 0; i < B; ++i) n = std::max<int64_t>(n, (int64_t)seq(i).size());
  }
  tokens = Tensor::empty({B, n}, kInt64);
  mask = Tensor::empty({B, n}, kBool);
  int64_t* t = tokens.data_ptr<int64_t>();
  bool* m = mask.data_ptr<bool>();
  for (int64_t i = 0; i < B; ++i) {
    const auto& s = seq(i);
    const int64_t len = std::min<int64_t>((int64_t)s.size(), n);
    for (int64_t j = 0; j < len; ++j) t[i * n + j] = s[(size_t)j];
    for (int64_t j = len; j < n; ++j) { t[i * n + j] = 0; m[i * n + j] = true; }
  }
}

// (B, n) per-position targets, cut and padded (with kIgnoreIndex) like the tokens of each row.
Tensor fill_targets(const Dataset& d, const std::vector<int64_t>& idx, int64_t n) {
  const int64_t B = (int64_t)idx.size();
  Tensor targets = Tensor::empty({B, n}, kInt64);
  int64_t* t = targets.data_ptr<int64_t>();
  for (int64_t i = 0; i < B; ++i) {
    const Example& e = d.examples[(size_t)idx[(size_t)i]];
    if (e.targets.size() != e.tokens.size())
      throw ShapeError("collate: example " + std::to_string(idx[(size_t)i]) + " of " + d.name + " has " +
                       std::to_string(e.targets.size()) + " targets for " + std::to_string(e.tokens.size()) +
                       " tokens (a batch with targets needs one per token in every row)");
    const int64_t len = std::min<int64_t>((int64_t)e.targets.size(), n);
    for (int64_t j = 0; j < len; ++j) t[i * n + j] = e.targets[(size_t)j];
    for (int64_t j = len; j < n; ++j) t[i * n + j] = kIgnoreIndex;
  }
  return targets;
}
}  // namespace

Batch collate(const Dataset& d, const std::vector<int64_t>& indices, const CollateOptions& opt) {
  for (int64_t i : indices)
    if (i < 0 || i >= (int64_t)d.size())
      throw std::out_of_range("collate: index " + std::to_string(i) + " outside dataset " + d.name + " of size " +
                              std::to_string(d.size()));
  Batch b;
  b.indices = indices;
  fill_rows(d, indices, false, opt, b.tokens, b.mask);
  if (d.paired) fill_rows(d, indices, true, opt, b.tokens2, b.mask2);
  b.labels = Tensor::empty({(int64_t)indices.size()}, kInt64);
  int64_t* l = b.labels.data_ptr<int64_t>();
  for (size_t i = 0; i < indices.size(); ++i) l[i] = d.examples[(size_t)indices[i]].label;
  const bool has_targets = std::any_of(indices.begin(), indices.end(),
                                       [&](int64_t i) { return !d.examples[(size_t)i].targets.empty(); });
  if (has_targets) b.targets = fill_targets(d, indices, b.tokens.size(1));
  return b;
}

DataLoader::DataLoader(const Dataset& data, LoaderOptions opt) : data_(&data), opt_(std::move(opt)) {
  if (opt_.batch_size <= 0) throw std::invalid_argument("DataLoader: batch_size must be positive");
  if (opt_.bucket_batches < 0) throw std::invalid_argument("DataLoader: bucket_batches must be >= 0");
  const Shard& sh = opt_.shard;
  if (sh.count < 1 || sh.rank < 0 || sh.rank >= sh.count)
    throw std::invalid_argument("DataLoader: shard " + std::to_string(sh.rank) + " of " + std::to_string(sh.count) +
                                " is not a rank in [0, count)");
  if (opt_.batch_size < sh.count)
    throw std::invalid_argument("DataLoader: a global batch of " + std::to_string(opt_.batch_size) +
                                " examples cannot give each of " + std::to_string(sh.count) +
                                " ranks one: --batch must be at least the number of ranks");
}

int64_t DataLoader::batches_per_epoch() const {
  const int64_t n = (int64_t)data_->size(), bs = opt_.batch_size;
  return opt_.drop_last ? n / bs : (n + bs - 1) / bs;
}

std::vector<std::vector<int64_t>> DataLoader::epoch_plan(int64_t epoch) const {
  const int64_t n = (int64_t)data_->size(), bs = opt_.batch_size;
  std::vector<int64_t> order((size_t)n);
  std::iota(order.begin(), order.end(), 0);
  // One independent stream per epoch: epoch e's order never depends on earlier epochs.
  detail::Rng rng(detail::subseed(opt_.seed, (uint64_t)epoch));
  if (opt_.shuffle) shuffle_indices(order, rng);
  std::vector<std::vector<int64_t>> batches;
  auto cut = [&](int64_t b, int64_t e) {  // batches from order[b, e)
    for (int64_t i = b; i < e; i += bs) {
      const int64_t j = std::min(e, i + bs);
      if (opt_.drop_last && j - i < bs) break;
      batches.emplace_back(order.begin() + i, order.begin() + j);
    }
  };
  if (opt_.bucket_batches > 0) {
    const int64_t chunk = opt_.bucket_batches * bs;
    auto len = [&](int64_t i) {
      const Example& e = data_->examples[(size_t)i];
      return e.tokens.size() + e.tokens2.size();
    };
    for (int64_t b = 0; b < n; b += chunk) {
      const int64_t e = std::min(n, b + chunk);
      std::stable_sort(order.begin() + b, order.begin() + e, [&](int64_t x, int64_t y) { return len(x) < len(y); });
      cut(b, e);
    }
    // Batches of one chunk are sorted by length; mix their order.
    if (opt_.shuffle)
      for (size_t i = batches.size(); i > 1; --i) std::swap(batches[i - 1], batches[rng.below(i)]);
  } else {
    cut(0, n);
  }
  return batches;
}

const std::vector<int64_t>& DataLoader::cached_batch(int64_t epoch, int64_t index) const {
  if (epoch != cached_epoch_) {
    cached_plan_ = epoch_plan(epoch);
    cached_epoch_ = epoch;
  }
  if (index < 0 || index >= (int64_t)cached_plan_.size())
    throw std::out_of_range("DataLoader: batch " + std::to_string(index) + " of epoch " + std::to_string(epoch) +
                            " does not exist (" + std::to_string(cached_plan_.size()) + " batches per epoch)");
  return cached_plan_[(size_t)index];
}

Batch DataLoader::batch_at(int64_t epoch, int64_t index) const {
  if (epoch < 0) throw std::out_of_range("DataLoader: negative epoch");
  const std::vector<int64_t>& all = cached_batch(epoch, index);
  return collate(*data_, opt_.shard.whole() ? all : opt_.shard.of(all), opt_.collate);
}

Batch DataLoader::next() {
  const int64_t per = batches_per_epoch();
  if (per == 0)
    throw std::invalid_argument("DataLoader: dataset " + data_->name + " has " + std::to_string(data_->size()) +
                                " examples, too few for one batch of " + std::to_string(opt_.batch_size));
  if (state_.index >= per) state_ = {state_.epoch + 1, 0};
  Batch b = batch_at(state_.epoch, state_.index);
  if (++state_.index >= per) state_ = {state_.epoch + 1, 0};
  return b;
}

void DataLoader::set_state(const LoaderState& s) {
  if (s.epoch < 0 || s.index < 0) throw std::invalid_argument("DataLoader::set_state: negative position");
  state_ = s;
}

std::vector<std::vector<int64_t>> sequential_batches(size_t n, int64_t batch_size, const Shard& shard) {
  if (batch_size <= 0) throw std::invalid_argument("sequential_batches: batch_size must be positive");
  std::vector<std::vector<int64_t>> out;
  int64_t k = 0;
  for (size_t i = 0; i < n; i += (size_t)batch_size) {
    if (k++ % shard.count != shard.rank) continue;
    std::vector<int64_t> b;
    for (size_t j = i; j < std::min(n, i + (size_t)batch_size); ++j) b.push_back((int64_t)j);
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace lotgrad::data
