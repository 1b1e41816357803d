// ListOps (LRA): nested MIN / MAX / MED / SM expressions over digits, 10 classes.
//
// Generator: the official algorithm (lra_benchmarks/data/listops.py in
// github.com/google-research/long-range-arena; see docs/lra.md §2):
//   gen(depth): with probability 1 - VALUE_P (always at max_depth) a leaf digit 0..9;
//               else an operator with k ~ U{2..max_args} children gen(depth + 1).
//   A tree's length is its token count (op + children + closing bracket). A root is kept iff
//   min_length < length < max_length (strict), duplicates are dropped, and the unique trees
//   are split in order into train / val / test.
// Speed: a tree is generated directly as tokens and abandoned as soon as it reaches
// max_length (it would be rejected anyway), so the accepted trees have exactly the official
// distribution. Acceptance is ~8% at 500-2000; 2,000 trees take well under a second.
//
// Labels: MIN, MAX; MED = int(median) (mean of the two middle values, truncated, for an even
// count); SM = sum mod 10.
//
// Files: `<dir>/basic_{train,val,test}.tsv`, header `Source\tTarget`, one expression per line
// printed as the official generator does: `( ( ( [MAX 2 ) 9 ) ] )` for [MAX 2 9].
//
// Token ids (vocabulary size 16; PAD = 0):
//   0 PAD | digits 0..9 -> 1..10 | [MIN 11 | [MAX 12 | [MED 13 | [SM 14 | X (= "]") 15
// Tokenisation as in LRA: drop "(" and ")", replace "]" by "X", split on whitespace.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dataset.h"

namespace lotgrad::data {

constexpr token_t kListOpsPad = 0;
constexpr token_t kListOpsDigit0 = 1;  // digit d has id d + 1
constexpr token_t kListOpsMin = 11, kListOpsMax = 12, kListOpsMed = 13, kListOpsSum = 14, kListOpsClose = 15;
constexpr int64_t kListOpsVocab = 16;
constexpr int64_t kListOpsClasses = 10;

// Symbol of an id ("[MIN", "7", "X"); "<pad>" for 0; throws std::out_of_range otherwise.
std::string listops_symbol(token_t id);
// Id of a symbol ("[MAX", "3", "X" or "]"); -1 when unknown.
token_t listops_id(const std::string& symbol);

struct ListOpsOptions {
  int64_t min_length = 500;   // exclusive
  int64_t max_length = 2000;  // exclusive
  int max_depth = 10;
  int max_args = 10;
  double value_p = 0.25;
  int64_t train = 96000, val = 2000, test = 2000;
  uint64_t seed = 0;
};

struct ListOpsStats {
  int64_t attempts = 0;  // trees drawn
  int64_t accepted = 0;  // inside the length limits
  int64_t duplicates = 0;
};

// `count` unique accepted trees (tokens + label), in generation order. Deterministic in
// opt.seed. Throws std::invalid_argument for impossible options.
std::vector<Example> generate_listops(int64_t count, const ListOpsOptions& opt, ListOpsStats* stats = nullptr);

struct ListOpsSplits {
  Dataset train, val, test;
};
// train + val + test unique trees, split in generation order.
ListOpsSplits generate_listops_splits(const ListOpsOptions& opt, ListOpsStats* stats = nullptr);

// Value of an expression given as ids (e.g. from listops_tokenize); throws
// std::invalid_argument when the ids are not a well-formed expression.
int64_t listops_evaluate(const std::vector<token_t>& tokens);
// Official printed form with parentheses.
std::string listops_source(const std::vector<token_t>& tokens);
// LRA tokenisation of a printed expression; throws std::invalid_argument on an unknown symbol.
std::vector<token_t> listops_tokenize(const std::string& source);

// Writes `<dir>/basic_train.tsv`, `basic_val.tsv`, `basic_test.tsv`.
void write_listops_tsv(const std::string& path, const Dataset& d);
void write_listops(const std::string& dir, const ListOpsSplits& s);

struct ListOpsReadOptions {
  int64_t max_length = 0;  // > 0: truncate token lists to this length
  bool verify_labels = false;  // check each label against the evaluated expression
};
// Reads one TSV (header `Source\tTarget`, optional). Errors name the file and line.
Dataset read_listops_tsv(const std::string& path, const ListOpsReadOptions& opt = {});
// Reads `<dir>/basic_{train,val,test}.tsv`.
ListOpsSplits read_listops(const std::string& dir, const ListOpsReadOptions& opt = {});

}  // namespace lotgrad::data
