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
//   targets: kMqarIgnore (-100, PyTorch's ignore_index, as zoology) everywhere except
//     targets[2N·passes + 2·g_j] = v_j: the model reads a query key and outputs its value.
// Each key is queried exactly once, in random order. Metric: accuracy of argmax over the
// labelled positions; loss: cross-entropy on the same positions.
//
// Token 0 is the query-region filler (not padding): every row has exactly L tokens.
// Zoology Figure 2 grid: V = 8192, (L, N) in {(64, 4), (128, 8), (256, 16)}, random_non_queries
// off. Example i is a pure function of (seed, i), so a prefix of a larger set is the smaller set.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/tensor.h"
#include "dataset.h"

namespace lotgrad::data {

constexpr token_t kMqarIgnore = -100;  // target of every position that is not a query key

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

}  // namespace lotgrad::data
