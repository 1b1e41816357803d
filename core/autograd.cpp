#include "autograd.h"

#include "parallel.h"

#include <atomic>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "iter.h"

namespace lotgrad {

namespace {
thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_seq{0};

// Sink for a leaf's gradient: accumulates into leaf.grad.
struct AccumulateGrad : Node {
  std::shared_ptr<TensorImpl> leaf;
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> l) : leaf(std::move(l)) {}
  const char* name() const override { return "AccumulateGrad"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    if (!g[0].defined()) return {};
    if (!leaf->grad) {
      leaf->grad = g[0].detach().clone().impl_ptr();  // own copy: never alias an upstream buffer
    } else {
      Tensor(leaf->grad).add_(g[0]);
    }
    return {};
  }
};
}  // namespace

bool GradMode::is_enabled() { return g_grad_enabled; }
void GradMode::set_enabled(bool on) { g_grad_enabled = on; }

SavedTensor::SavedTensor(const Tensor& t) {
  if (t.defined()) {
    t_ = t.detach();
    version_ = t.version();
  }
}
Tensor SavedTensor::unpack(const Node* owner) const {
  if (released_)
    throw AutogradError(std::string("backward through ") + owner->name() +
                        " a second time: its saved tensors were freed by the first backward; call "
                        "backward(grad, /*retain_graph=*/true) the first time if you need to go back twice");
  if (t_.defined() && t_.version() != version_)
    throw AutogradError(std::string(owner->name()) + ": a tensor it saved for the gradient, " + describe(t_) +
                        ", was modified by an in-place operation (version " + std::to_string(version_) +
                        " when saved, now " + std::to_string(t_.version()) + ")");
  return t_;
}

bool should_record(std::initializer_list<Tensor> inputs) {
  if (!GradMode::is_enabled()) return false;
  for (const auto& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}
bool should_record(const std::vector<Tensor>& inputs) {
  if (!GradMode::is_enabled()) return false;
  for (const auto& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Node::~Node() {
  // Take over every input node that no one else holds; each is destroyed after its own inputs
  // were taken over in turn, so no destructor runs inside another one.
  std::vector<std::shared_ptr<Node>> owned;
  auto take = [&owned](std::vector<Edge>& edges) {
    for (Edge& e : edges)
      if (e.fn && e.fn.use_count() == 1) owned.push_back(std::move(e.fn));
  };
  take(next);
  while (!owned.empty()) {
    std::shared_ptr<Node> n = std::move(owned.back());
    owned.pop_back();
    take(n->next);
  }  // n is freed here with no input node left that only it held
}

void collect_edges(Node& n, const std::vector<Tensor>& inputs) {
  n.seq = g_seq.fetch_add(1, std::memory_order_relaxed);
  n.next.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!t.defined()) continue;
    Edge& e = n.next[i];
    e.shape = t.shape();
    e.dtype = t.dtype();
    if (!t.requires_grad()) continue;
    if (t.grad_fn()) {
      e.fn = t.grad_fn();
      e.input_nr = t.impl()->output_nr;
    } else {
      e.fn = std::make_shared<AccumulateGrad>(t.impl_ptr());
    }
  }
}

void set_history(Tensor& out, const std::shared_ptr<Node>& node, uint32_t output_nr) {
  out.impl()->grad_fn = node;
  out.impl()->output_nr = output_nr;
  if (output_nr + 1 > node->num_outputs) node->num_outputs = output_nr + 1;
}

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  if ((int64_t)shape.size() > g.dim() || broadcast_shapes(shape, g.shape(), "sum_to") != g.shape())
    throw ShapeError("sum_to: shape " + shape_str(shape) + " does not broadcast to the gradient's shape " +
                     shape_str(g.shape()));
  // Strides of the (contiguous) result seen from g's shape: 0 along reduced dims.
  Shape rs = contiguous_strides(shape);
  Shape ost(g.dim(), 0);
  const size_t lead = g.dim() - shape.size();
  for (size_t i = 0; i < shape.size(); ++i) ost[lead + i] = (shape[i] == 1 && g.shape()[lead + i] != 1) ? 0 : rs[i];
  // Fast path: a contiguous g reduced over its leading dims only (a bias gradient, summed
  // over B*n rows): fixed 256-row blocks summed in parallel, then added in block order in
  // double, so the bits do not depend on the thread count.
  int64_t p = 0;  // g's dims [0, p) are reduced, [p, dim) kept
  while (p < g.dim() && (ost[p] == 0 || g.shape()[p] == 1)) ++p;
  bool leading = g.is_contiguous();
  for (int64_t d = p; d < g.dim() && leading; ++d) leading = ost[d] != 0 || g.shape()[d] == 1;
  if (leading) {
    const int64_t inner = shape_numel(shape), rows = inner ? g.numel() / inner : 0;
    constexpr int64_t kRows = 256;
    const int64_t nblk = (rows + kRows - 1) / kRows;
    Tensor out = make_tensor_uninit(shape, g.dtype());
    dispatch_float(g.dtype(), "sum_to", [&]<class T>() {
      std::vector<T> part((size_t)(nblk * inner), T(0));
      const T* gp = g.data_ptr<T>();
      parallel_for(0, nblk, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, kRows * inner)), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* pp = part.data() + b * inner;
          for (int64_t r = b * kRows; r < std::min(rows, (b + 1) * kRows); ++r)
            for (int64_t j = 0; j < inner; ++j) pp[j] += gp[r * inner + j];
        }
      });
      std::vector<double> acc((size_t)inner, 0.0);
      for (int64_t b = 0; b < nblk; ++b)
        for (int64_t j = 0; j < inner; ++j) acc[(size_t)j] += (double)part[(size_t)(b * inner + j)];
      T* op = out.data_ptr<T>();
      for (int64_t j = 0; j < inner; ++j) op[j] = static_cast<T>(acc[(size_t)j]);
    });
    return out;
  }
  Tensor out = make_tensor(shape, g.dtype());
  dispatch_float(g.dtype(), "sum_to", [&]<class T>() {
    // Accumulate in double: bias gradients sum over B*n rows.
    std::vector<double> acc((size_t)shape_numel(shape), 0.0);
    const T* gp = g.data_ptr<T>();
    strided_loop<2>(g.shape(), {g.strides(), ost}, INT64_MAX, [&](auto off, int64_t len, auto in) {
      if (in[1] == 0) {
        double s = 0;
        for (int64_t i = 0; i < len; ++i) s += gp[off[0] + i * in[0]];
        acc[off[1]] += s;
      } else {
        for (int64_t i = 0; i < len; ++i) acc[off[1] + i * in[1]] += gp[off[0] + i * in[0]];
      }
    });
    T* op = out.data_ptr<T>();
    for (size_t i = 0; i < acc.size(); ++i) op[i] = static_cast<T>(acc[i]);
  });
  return out;
}

namespace {
void accumulate(std::vector<Tensor>& slots, uint32_t k, Tensor g, const Node& to) {
  if (slots.size() <= k) slots.resize(k + 1);
  if (!slots[k].defined()) {
    slots[k] = std::move(g);
  } else {
    if (slots[k].dtype() != g.dtype())
      throw AutogradError(std::string("gradient dtype mismatch flowing into ") + to.name());
    // Add in place when nothing else holds the buffer (the common case: a gradient this
    // engine made); otherwise one out-of-place add (never write into a tensor a node kept).
    Tensor& s = slots[k];
    if (s.impl_ptr().use_count() == 1 && s.impl_ptr()->storage.use_count() == 1 && s.is_contiguous() && s.shape() == g.shape()) {
      s.add_(g);
    } else {
      Tensor t = s.detach().clone();
      t.add_(g);
      s = t;
    }
  }
}
}  // namespace

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph) {
  NoGradGuard no_grad;  // backward builds no graph of its own
  if (roots.size() != grads.size()) throw AutogradError("backward: need one gradient per root");
  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  std::vector<std::shared_ptr<Node>> starts;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    const Tensor& g = grads[i];
    if (!r.requires_grad())
      throw AutogradError("backward: tensor " + describe(r) +
                          " does not require grad and has no grad_fn (did you forget requires_grad_() on a "
                          "parameter, or run the forward under NoGradGuard?)");
    if (g.shape() != r.shape() || g.dtype() != r.dtype())
      throw_shape("backward", "gradient must match the root's shape and dtype", {{"root", &r}, {"grad", &g}});
    std::shared_ptr<Node> fn = r.grad_fn();
    if (!fn) {  // a leaf as root
      fn = std::make_shared<AccumulateGrad>(r.impl_ptr());
      fn->seq = g_seq.fetch_add(1);
    }
    accumulate(buffers[fn.get()], r.is_leaf() ? 0 : r.impl()->output_nr, g, *fn);
    starts.push_back(fn);
  }
  // Count, for every reachable node, how many edges point at it (explicit stack: no recursion).
  std::unordered_map<Node*, int64_t> deps;
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack;
  for (auto& s : starts)
    if (seen.insert(s.get()).second) stack.push_back(s.get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (auto& e : n->next) {
      if (!e.fn) continue;
      ++deps[e.fn.get()];
      if (seen.insert(e.fn.get()).second) stack.push_back(e.fn.get());
    }
  }
  // Ready nodes run latest-created first (as PyTorch): deterministic for a given graph.
  auto later = [](const std::shared_ptr<Node>& a, const std::shared_ptr<Node>& b) { return a->seq < b->seq; };
  std::priority_queue<std::shared_ptr<Node>, std::vector<std::shared_ptr<Node>>, decltype(later)> ready(later);
  std::unordered_set<Node*> queued;
  for (auto& s : starts)
    if (deps[s.get()] == 0 && queued.insert(s.get()).second) ready.push(s);
  while (!ready.empty()) {
    std::shared_ptr<Node> n = ready.top();
    ready.pop();
    std::vector<Tensor> in = std::move(buffers[n.get()]);
    buffers.erase(n.get());
    in.resize(std::max<size_t>(in.size(), n->num_outputs));
    std::vector<Tensor> out = n->apply(in);
    if (!retain_graph) n->release();
    for (size_t i = 0; i < n->next.size(); ++i) {
      Edge& e = n->next[i];
      if (!e.fn) continue;
      if (i < out.size() && out[i].defined()) {
        Tensor g = out[i];
        if (g.shape() != e.shape) g = sum_to(g, e.shape);  // the one place broadcasting is undone
        if (g.dtype() != e.dtype)
          throw AutogradError(std::string(n->name()) + " returned a " + dtype_name(g.dtype()) +
                              " gradient for a " + dtype_name(e.dtype) + " input");
        accumulate(buffers[e.fn.get()], e.input_nr, std::move(g), *e.fn);
      }
      if (--deps[e.fn.get()] == 0) ready.push(e.fn);
    }
  }
}

}  // namespace lotgrad
