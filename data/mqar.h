// MQAR: multi-query associative recall (Arora et al., "Zoology", arXiv 2312.04927), the recall
// probe used by the Zoology and DeltaNet (arXiv 2406.06484) papers.
//
// Generator: the algorithm of HazyResearch/zoology `zoology/data/multiquery_ar.py`, with
// lotgrad's counter-based random numbers (same distribution, not the same draws as numpy):
//   keys   k_1..k_N: distinct, uniform from {1, ..., V/2 - 1}
//   values v_1..v_N: distinct, uniform from {V/2, ..., V - 1}
//   context (positions 0 .. 2N·passes - 1): k_1 v_1 k_2 v_2 ... k_N v_N, repeated `passes` times
//   query region: S = (L - 2N·passes) / 2 slots; N distinct slots g_j are drawn without
//     replacement with p(g) ∝ a·g^(a-1) for g = 1..S (a = power_a; a = 1 is uniform, a = 0.01
//     strongly favours early slots). Key k_j is written at absolute position 2N·passes + 2·g_j
//     (g_j 0-based); every other query-region token is 0, or, with random_non_queries, a
//     uniform token in [0, V) (it can collide with a key: zoology issue #29).
//   targets: kMqarIgnore (= kIgnoreIndex, -100, PyTorch's ignore_index, as zoology) everywhere except
//     targets[2N·passes + 2·g_j] = v_j: the model reads a query key and outputs its value.
// Each key is queried exactly once, in random order. Metric: accuracy of argmax over the
// labelled positions; loss: cross-entropy on the same positions.
//
// Token 0 is the query-region filler (not padding): every row has exactly L tokens.
// Zoology Figure 2 grid: V = 8192, (L, N) in {(64, 4), (128, 8), (256, 16)}, random_non_queries
// off. Example i is a pure function of (seed, i), so a prefix of a larger set is the smaller set.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../core/tensor.h"
#include "dataset.h"

namespace lotgrad::data {

constexpr token_t kMqarIgnore = kIgnoreIndex;  // target of every position that is not a query key

struct MqarOptions {
  int64_t vocab_size = 8192;   // V; keys < V/2 <= values
  int64_t seq_len = 64;        // L, even, < V
  int64_t num_kv_pairs = 4;    // N; 2N·passes + 2N <= L
  double power_a = 0.01;       // a > 0: query-slot law p(g) ∝ a·g^(a-1)
  int64_t passes = 1;          // repetitions of the context (JRT, arXiv 2407.05483)
  // Zoology's function defaults to true; its Figure 2 configs (and lotgrad) use false.
  bool random_non_queries = false;
  uint64_t seed = 0;
};

struct MqarExample {
  std::vector<token_t> inputs;   // (L) token ids in [0, V)
  std::vector<token_t> targets;  // (L) kMqarIgnore, or the value at a query key's position
};

// Throws std::invalid_argument naming the option and its value when the options are impossible.
void validate(const MqarOptions& opt);
// Query-slot probabilities p(g), g = 1..slots (index g - 1), normalised.
std::vector<double> mqar_slot_probabilities(int64_t slots, double power_a);
// Example `index` of the stream `opt.seed` (deterministic).
MqarExample mqar_example(const MqarOptions& opt, int64_t index);
// Examples first .. first + count - 1.
std::vector<MqarExample> generate_mqar(int64_t count, const MqarOptions& opt, int64_t first = 0);

struct MqarBatch {
  Tensor inputs;   // (B, L) i64
  Tensor targets;  // (B, L) i64, kMqarIgnore outside query positions
};
// Stacks the examples at `indices` (all of one length).
MqarBatch mqar_batch(const std::vector<MqarExample>& examples, const std::vector<int64_t>& indices);

// ---- As a generic Dataset (collate gives Batch::tokens = inputs, Batch::targets = targets;
// every row has L tokens, so no padding). vocab_size = num_classes = V; labels are 0.
// Examples first .. first + count - 1 of the stream opt.seed.
Dataset mqar_dataset(const MqarOptions& opt, int64_t count, int64_t first = 0, const std::string& name = "mqar");

// Train / val / test sets. Train is the stream opt.seed itself (examples 0 .. train - 1, so
// it equals mqar_dataset(opt, train)); val and test are examples 0 .. of the streams
// mqar_split_seed(opt.seed, 1) and (opt.seed, 2): independent of train and of each other, and
// unchanged when the train size changes (one test set for every training-set size). An
// example can recur across splits only by chance (likely only for tiny V and L).
struct MqarSplits {
  Dataset train, val, test;
  MqarOptions options;  // the options of the train stream (seed = opt.seed)
};
uint64_t mqar_split_seed(uint64_t seed, int split);  // split 0 = train (seed itself), 1 = val, 2 = test
MqarSplits generate_mqar_splits(const MqarOptions& opt, int64_t train, int64_t val, int64_t test);

// Files dir/mqar_{train,val,test}.txt. Line 1, the header:
//   lotgrad-mqar v1 examples=<count> vocab_size=<V> seq_len=<L> num_kv_pairs=<N> power_a=<a>
//     passes=<p> random_non_queries=<0|1> seed=<s>          (one line; power_a round-trips exactly)
// then one example per line: the L input ids separated by spaces, a tab, the L targets
// (-100 where unlabelled). All three headers carry splits.options (the train seed; val and
// test are its derived streams). Each file is written to a temporary name and renamed, so a
// killed run leaves no half file under the final name. Throws std::invalid_argument naming
// the split and example when an example does not have seq_len tokens and targets.
void write_mqar(const std::string& dir, const MqarSplits& splits);
// Reads the three files (dataset names are the file paths). A missing file, a bad header,
// headers that disagree, a wrong count of ids, an id outside [0, V), a target that is neither
// -100 nor an id in [0, V), or an example count unlike the header's throw
// std::invalid_argument naming the file and line.
MqarSplits read_mqar(const std::string& dir);

}  // namespace lotgrad::data
