#include "autograd.h"

#include "parallel.h"

#include <atomic>
#include <cmath>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "iter.h"

namespace lotgrad {

namespace {
thread_local bool g_grad_enabled = true;
thread_local bool g_anomaly = false;
std::atomic<uint64_t> g_seq{0};

// Sink for a leaf's gradient: accumulates into leaf.grad.
// A leaf's gradient is added to .grad as soon as it is ready (AccumulateGrad runs before any
// other ready node), so that a post-accumulate-grad hook can start work on it (a reduction
// across processes) while the rest of the backward pass runs.
constexpr uint64_t kAccumulateFirst = UINT64_MAX;

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
bool AnomalyMode::is_enabled() { return g_anomaly; }
void AnomalyMode::set_enabled(bool on) { g_anomaly = on; }

// ---- anomaly detection ----------------------------------------------------------------

std::string NonFiniteCount::str() const {
  if (total() == 0) return "finite";
  std::string s;
  if (nan) s = std::to_string(nan) + " nan";
  if (inf) s += (s.empty() ? "" : ", ") + std::to_string(inf) + " inf";
  return s;
}

NonFiniteCount count_nonfinite(const Tensor& t0) {
  if (!t0.defined() || !is_floating(t0.dtype())) return {};
  const Tensor t = t0.detach().contiguous();  // detached: a copy of a non-contiguous view records nothing
  constexpr int64_t kBlock = 4096;
  const int64_t n = t.numel(), nb = (n + kBlock - 1) / kBlock;
  std::vector<NonFiniteCount> part((size_t)nb);  // per block: integer counts, so any order gives the same sum
  dispatch_float(t.dtype(), "count_nonfinite", [&]<class T>() {
    const T* x = t.data_ptr<T>();
    parallel_for(0, nb, std::max<int64_t>(1, kParallelGrain / kBlock), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        NonFiniteCount& c = part[(size_t)b];
        for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i)
          if (!std::isfinite(x[i])) ++(std::isnan(x[i]) ? c.nan : c.inf);
      }
    });
  });
  NonFiniteCount all;
  for (const auto& c : part) {
    all.nan += c.nan;
    all.inf += c.inf;
  }
  return all;
}

namespace {
// Recorded in anomaly mode: each input's NaN/Inf count (before the op's outputs exist).
void note_inputs(Node& n, const std::vector<Tensor>& inputs) {
  n.anomaly = std::make_unique<AnomalyNote>();
  for (const Tensor& t : inputs) {
    n.anomaly->inputs.push_back(count_nonfinite(t));
    n.anomaly->input_desc.push_back(t.defined() ? describe(t) : "none");
  }
}
void note_output(AnomalyNote& a, const Tensor& out, uint32_t output_nr) {
  if (a.outputs.size() <= output_nr) {
    a.outputs.resize(output_nr + 1);
    a.output_desc.resize(output_nr + 1);
  }
  a.outputs[output_nr] = count_nonfinite(out);
  a.output_desc[output_nr] = describe(out);
}

NonFiniteCount sum(const std::vector<NonFiniteCount>& cs) {
  NonFiniteCount s;
  for (const auto& c : cs) {
    s.nan += c.nan;
    s.inf += c.inf;
  }
  return s;
}

// "LogBackward (inputs (3) f32 [finite]; output (3) f32 [1 nan])"
std::string describe_node(const Node& n) {
  std::string s = std::string(n.name()) + " (inputs ";
  const AnomalyNote& a = *n.anomaly;
  for (size_t i = 0; i < a.inputs.size(); ++i) s += (i ? ", " : "") + a.input_desc[i] + " [" + a.inputs[i].str() + "]";
  s += "; output" + std::string(a.outputs.size() == 1 ? " " : "s ");
  for (size_t i = 0; i < a.outputs.size(); ++i) s += (i ? ", " : "") + a.output_desc[i] + " [" + a.outputs[i].str() + "]";
  return s + ")";
}

// Every node reachable from roots (explicit stack: no recursion).
std::vector<const Node*> reachable(const std::vector<const Node*>& starts) {
  std::unordered_set<const Node*> seen;
  std::vector<const Node*> stack, all;
  for (const Node* s : starts)
    if (s && seen.insert(s).second) stack.push_back(s);
  while (!stack.empty()) {
    const Node* n = stack.back();
    stack.pop_back();
    all.push_back(n);
    for (const auto& e : n->next)
      if (e.fn && seen.insert(e.fn.get()).second) stack.push_back(e.fn.get());
  }
  return all;
}

// The first recorded op (creation order) that made a NaN from NaN-free inputs, or an Inf from
// finite ones; with the op's name (empty when none).
std::pair<std::string, std::string> origin_of(const std::vector<const Node*>& starts) {
  const Node *first_nan = nullptr, *first_inf = nullptr;
  int64_t inf_ops = 0;
  for (const Node* n : reachable(starts)) {
    if (!n->anomaly) continue;
    const NonFiniteCount in = sum(n->anomaly->inputs), out = sum(n->anomaly->outputs);
    if (out.nan > 0 && in.nan == 0 && (!first_nan || n->seq < first_nan->seq)) first_nan = n;
    if (out.inf > 0 && in.total() == 0) {
      ++inf_ops;
      if (!first_inf || n->seq < first_inf->seq) first_inf = n;
    }
  }
  const std::string more = inf_ops > 1 ? " (the first of " + std::to_string(inf_ops) + " ops that made an Inf from finite inputs)" : "";
  if (first_nan) {
    std::string s = "the first op to make a NaN from inputs without one: " + describe_node(*first_nan);
    if (first_inf && first_inf->seq < first_nan->seq)
      s += "; before it, an Inf came from finite inputs in " + describe_node(*first_inf) + more;
    return {s, first_nan->name()};
  }
  if (first_inf) return {"the first op to make an Inf from finite inputs: " + describe_node(*first_inf) + more, first_inf->name()};
  return {"", ""};
}

// Anomaly mode at the start of backward: roots and seed gradients must be finite.
void check_roots(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads) {
  for (size_t i = 0; i < roots.size(); ++i) {
    for (const Tensor* t : {&roots[i], &grads[i]}) {
      const NonFiniteCount c = count_nonfinite(*t);
      if (c.total() == 0) continue;
      const bool is_root = t == &roots[i];
      auto [origin, op] = origin_of({roots[i].grad_fn().get()});
      if (origin.empty())
        origin = is_root ? "no op recorded in anomaly mode made it (it came from a leaf, a tensor computed without grad, "
                           "or ops recorded with anomaly mode off)"
                         : "the seed gradient was given so";
      throw AnomalyError("detect_anomaly: backward from " + std::string(is_root ? "a root " : "a seed gradient ") +
                             describe(*t) + " holding " + c.str() + " of " + std::to_string(t->numel()) + " values; " +
                             origin,
                         op);
    }
  }
}

// Anomaly mode after a node ran: every gradient it returned must be finite.
void check_node(const Node& n, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  for (size_t i = 0; i < out.size(); ++i) {
    if (!out[i].defined()) continue;
    const NonFiniteCount c = count_nonfinite(out[i]);
    if (c.total() == 0) continue;
    std::string s = "detect_anomaly: " + std::string(n.name()) + " returned a gradient holding " + c.str() + " of " +
                    std::to_string(out[i].numel()) + " values for its input " + std::to_string(i) + ", " +
                    describe(out[i]) + "; incoming gradients:";
    for (size_t k = 0; k < in.size(); ++k)
      s += (k ? ", " : " ") + (in[k].defined() ? describe(in[k]) + " [" + count_nonfinite(in[k]).str() + "]" : "none");
    s += "; the op's inputs:";
    for (size_t k = 0; k < n.next.size(); ++k) {
      const std::string d = n.anomaly ? n.anomaly->input_desc[k] + " [" + n.anomaly->inputs[k].str() + "]"
                                      : shape_str(n.next[k].shape) + " " + dtype_name(n.next[k].dtype);
      s += (k ? ", " : " ") + d;
    }
    if (n.anomaly && sum(n.anomaly->outputs).total() > 0) s += "; its forward output held " + sum(n.anomaly->outputs).str();
    if (n.anomaly && sum(n.anomaly->inputs).total() > 0) {  // the cause lies further back, in the forward pass
      const std::string origin = origin_of({&n}).first;
      if (!origin.empty()) s += "; in the forward pass, " + origin;
    }
    throw AnomalyError(s, n.name());
  }
}
}  // namespace

std::string anomaly_origin(const Tensor& root) { return origin_of({root.grad_fn().get()}).first; }

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
  if (g_anomaly) note_inputs(n, inputs);
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
      e.fn->seq = kAccumulateFirst;
    }
  }
}

void set_history(Tensor& out, const std::shared_ptr<Node>& node, uint32_t output_nr) {
  out.impl()->grad_fn = node;
  out.impl()->output_nr = output_nr;
  if (output_nr + 1 > node->num_outputs) node->num_outputs = output_nr + 1;
  if (node->anomaly) note_output(*node->anomaly, out, output_nr);
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
  const bool anomaly = g_anomaly;  // read once: one branch per node below
  if (anomaly) check_roots(roots, grads);
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
      fn->seq = kAccumulateFirst;
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
  // Leaves with a post-accumulate-grad hook: how many of their AccumulateGrad nodes (one per
  // use) this backward runs; the hook fires after the last.
  std::unordered_map<TensorImpl*, int64_t> hooked;
  for (Node* n : seen)
    if (auto* a = dynamic_cast<AccumulateGrad*>(n); a && a->leaf->post_accumulate_grad_hook) ++hooked[a->leaf.get()];
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
    if (anomaly) check_node(*n, in, out);
    if (!retain_graph) n->release();
    if (!hooked.empty())
      if (auto* a = dynamic_cast<AccumulateGrad*>(n.get()); a && a->leaf->post_accumulate_grad_hook && --hooked[a->leaf.get()] == 0)
        (*a->leaf->post_accumulate_grad_hook)(Tensor(a->leaf));
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
