// In-memory datasets and batching for the Long Range Arena tasks.
//
// Every reader and generator in data/ produces a Dataset: a list of Examples (token ids plus
// an integer label; retrieval examples carry a second token list) with the vocabulary size and
// class count the model needs. Token id 0 is PAD everywhere (see the per-format headers for
// the other ids). A DataLoader turns a Dataset into Batches:
//
//   Batch { tokens (B, n) i64; mask (B, n) bool, true = padding; labels (B) i64;
//           tokens2 / mask2 (B, n2): only for pair (retrieval) datasets;
//           targets (B, n) i64: only for per-token datasets (MQAR, character LM) }
//
// which is lotgrad's mask convention (nn/attention.h: key_padding_mask true = pad).
//
// Shuffling is a pure function of (seed, epoch): the batch at position (epoch, index) is always
// the same, so a training run resumed from a saved LoaderState sees exactly the batches the
// uninterrupted run would have seen.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../core/tensor.h"

namespace lotgrad::data {

// Token ids are stored as int32 in memory (ListOps train is ~100M tokens); batches are i64.
using token_t = int32_t;

// Target of a position that carries no label (PyTorch's CrossEntropyLoss ignore_index).
constexpr token_t kIgnoreIndex = -100;

struct Example {
  std::vector<token_t> tokens;
  int64_t label = 0;
  std::vector<token_t> tokens2;  // second document (retrieval); empty otherwise
  // Per-position labels, one per token, kIgnoreIndex where unlabelled (sequence tasks: MQAR,
  // language modelling). Empty for classification examples, which use `label`.
  std::vector<token_t> targets;
};

struct Dataset {
  std::string name;             // e.g. "listops/train", for messages
  std::vector<Example> examples;
  int64_t vocab_size = 0;       // ids are in [0, vocab_size); 0 = PAD
  int64_t num_classes = 0;
  bool paired = false;          // examples carry tokens2 (retrieval)

  size_t size() const { return examples.size(); }
  bool empty() const { return examples.empty(); }
  const Example& operator[](size_t i) const { return examples[i]; }
};

// Count of each label in [0, num_classes) (labels outside are ignored).
std::vector<int64_t> label_counts(const Dataset& d);
// Fraction of examples whose label is the most frequent one (the majority-class baseline).
double majority_rate(const Dataset& d);

// Deterministic split: shuffles with `seed` when seed != 0 (no shuffle for seed 0), then the
// first round(frac * size) examples go to the second dataset (`<name>/<second_name>`) and the
// rest stay. Order within each part is preserved.
std::pair<Dataset, Dataset> split_tail(Dataset d, double frac, const std::string& second_name = "val",
                                       uint64_t seed = 0);

struct Batch {
  Tensor tokens;   // (B, n) i64, PAD = 0
  Tensor mask;     // (B, n) bool, true = padding
  Tensor labels;   // (B) i64
  Tensor tokens2;  // (B, n2) i64: pair datasets only (undefined otherwise)
  Tensor mask2;    // (B, n2) bool
  Tensor targets;  // (B, n) i64, kIgnoreIndex at padding: per-token datasets only (undefined otherwise)
  std::vector<int64_t> indices;  // dataset positions of the rows, for debugging and eval dumps
  int64_t size() const { return (int64_t)indices.size(); }
  int64_t real_tokens() const;   // tokens that are not padding (both documents)
};

struct CollateOptions {
  // 0: pad to the longest sequence in the batch. > 0: pad every row to this length (a longer
  // sequence is an error unless `truncate` is set, which cuts it to pad_to).
  int64_t pad_to = 0;
  bool truncate = false;
};

// Builds a batch from the examples at `indices`. The mask is true exactly where the token
// was added as padding (a genuine token with id 0, e.g. a black pixel, is not masked: see
// image.h for the LRA token-0 quirk). When the examples carry targets, Batch::targets holds
// them, padded with kIgnoreIndex and truncated exactly like the tokens; every row must then
// have one target per token (a ShapeError names the example otherwise).
Batch collate(const Dataset& d, const std::vector<int64_t>& indices, const CollateOptions& opt = {});

// One process's part of every batch in data-parallel training (dist/): rank r of `count`
// takes items [r*n/count, (r+1)*n/count) of n (contiguous; the parts differ by at most one
// when count does not divide n; trainer.cpp weights each rank's loss by its part's size).
struct Shard {
  int64_t rank = 0, count = 1;
  int64_t begin(int64_t n) const { return rank * n / count; }
  int64_t end(int64_t n) const { return (rank + 1) * n / count; }
  bool whole() const { return count == 1; }
  template <class V>
  V of(const V& v) const {
    const int64_t n = (int64_t)v.size();
    return V(v.begin() + begin(n), v.begin() + end(n));
  }
};

struct LoaderOptions {
  int64_t batch_size = 32;
  bool shuffle = true;
  bool drop_last = false;   // drop an incomplete final batch of each epoch
  uint64_t seed = 0;
  // Length bucketing: > 0 groups the (shuffled) examples into chunks of bucket_batches batches,
  // sorts each chunk by length, cuts it into batches and shuffles the batch order, so rows in a
  // batch have similar lengths (less padding). 0 = off.
  int64_t bucket_batches = 0;
  CollateOptions collate;
  // Data-parallel: every rank draws the same global batches (same seed) and collates its
  // shard of each; batch_size is the global batch and must give every rank one example.
  Shard shard;
};

// Position of a loader: the next batch to produce is batch `index` of epoch `epoch`.
struct LoaderState {
  int64_t epoch = 0;
  int64_t index = 0;
  bool operator==(const LoaderState&) const = default;
};

// Endless iterator over batches; wraps into the next epoch. Holds a pointer to the dataset,
// which must outlive the loader.
class DataLoader {
 public:
  DataLoader(const Dataset& data, LoaderOptions opt);

  int64_t batches_per_epoch() const;
  // The dataset indices of every batch of an epoch, in order (pure function of seed, epoch).
  std::vector<std::vector<int64_t>> epoch_plan(int64_t epoch) const;
  // Returns the batch at the current position and advances it.
  Batch next();
  // The batch at any position, without moving.
  Batch batch_at(int64_t epoch, int64_t index) const;

  LoaderState state() const { return state_; }
  void set_state(const LoaderState& s);
  const LoaderOptions& options() const { return opt_; }
  const Dataset& dataset() const { return *data_; }

 private:
  const std::vector<int64_t>& cached_batch(int64_t epoch, int64_t index) const;
  const Dataset* data_;
  LoaderOptions opt_;
  LoaderState state_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<std::vector<int64_t>> cached_plan_;
};

// Single-pass, in-order batches covering every example once (the last batch may be short):
// for evaluation.
// Data-parallel evaluation: shard rank r of count gets batches r, r + count, r + 2 count, ...
std::vector<std::vector<int64_t>> sequential_batches(size_t n, int64_t batch_size, const Shard& shard = {});

}  // namespace lotgrad::data
