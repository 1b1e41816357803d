#include "recurrent.h"

#include <algorithm>
#include <vector>

#include "../ops/elementwise.h"
#include "../ops/shape.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {

// For one direction: order[b][i] = the position core sees at i (valid positions, in order or
// reversed, then the pads in order); identity when nothing moves.
struct Order {
  std::vector<std::vector<int64_t>> order, inverse;  // per batch row
  bool identity = true, same_for_all = true;
};

Order make_order(const Tensor& mask, int64_t B, int64_t n, bool reversed) {
  Order o;
  const auto valid = valid_positions(mask, B, n);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> ord = valid[(size_t)b];
    if (reversed) std::reverse(ord.begin(), ord.end());
    std::vector<bool> is_valid((size_t)n, false);
    for (int64_t p : ord) is_valid[(size_t)p] = true;
    for (int64_t p = 0; p < n; ++p)
      if (!is_valid[(size_t)p]) ord.push_back(p);
    std::vector<int64_t> inv((size_t)n);
    for (int64_t i = 0; i < n; ++i) inv[(size_t)ord[(size_t)i]] = i;
    for (int64_t i = 0; i < n; ++i) o.identity = o.identity && ord[(size_t)i] == i;
    if (b > 0) o.same_for_all = o.same_for_all && ord == o.order[0];
    o.order.push_back(std::move(ord));
    o.inverse.push_back(std::move(inv));
  }
  return o;
}

Tensor index_tensor(const std::vector<int64_t>& idx) { return Tensor::from_vector(idx, {(int64_t)idx.size()}); }

// out[b] = x[b] with dim `dim` (of x, >= 1) indexed by perm[b]: one index_select for all rows
// when every row has the same order, else one per row.
Tensor take(const Tensor& x, int64_t dim, const std::vector<std::vector<int64_t>>& perm, bool same_for_all) {
  if (same_for_all) return index_select(x, dim, index_tensor(perm[0]));
  std::vector<Tensor> rows;
  for (size_t b = 0; b < perm.size(); ++b) rows.push_back(index_select(x.select(0, (int64_t)b), dim - 1, index_tensor(perm[b])));
  return stack(rows, 0);
}

// One direction: core on x in `o`'s order, the result moved back along `dims` (time dims of
// the result: {2} for (B, H, n, d), {2, 3} for the (B, H, n, n) map).
Tensor one_direction(const Tensor& x, const Order& o, const SequenceCore& core, std::initializer_list<int64_t> dims) {
  if (o.identity) return core(x);
  Tensor y = core(take(x, 1, o.order, o.same_for_all));
  for (int64_t d : dims) y = take(y, d, o.inverse, o.same_for_all);
  return y;
}

Tensor run(const Tensor& x, const Tensor& mask, bool causal, const SequenceCore& core, std::initializer_list<int64_t> dims) {
  const int64_t B = x.size(0), n = x.size(1);
  Tensor y = one_direction(x, make_order(mask, B, n, false), core, dims);
  if (causal) return y;
  return add(y, one_direction(x, make_order(mask, B, n, true), core, dims));
}
}  // namespace

Tensor run_directions(const Tensor& x, const Tensor& key_padding_mask, bool causal, const SequenceCore& core) {
  return run(x, key_padding_mask, causal, core, {2});
}

Tensor run_directions_matrix(const Tensor& x, const Tensor& key_padding_mask, bool causal, const SequenceCore& core) {
  return run(x, key_padding_mask, causal, core, {2, 3});
}

}  // namespace lotgrad::nn
