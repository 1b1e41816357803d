// Reverse-mode autodiff without a global tape: every differentiable op hangs a Node off
// its outputs; the node's edges point at the nodes that produced its inputs (or at an
// AccumulateGrad node for leaves). backward() walks the graph in topological order with an
// explicit work list (no recursion, so 100,000-op chains are fine).
//
// Writing an op (the 3-place pattern): kernel, an XxxBackward node that stores what it
// saved, and the public function that validates, runs the kernel and records the node:
//
//   struct MulBackward : Node {
//     SavedTensor a, b;
//     const char* name() const override { return "MulBackward"; }
//     std::vector<Tensor> apply(std::vector<Tensor>& g) override {
//       return {needs_grad(0) ? mul(g[0], b.unpack(this)) : Tensor(),
//               needs_grad(1) ? mul(g[0], a.unpack(this)) : Tensor()};
//     }
//     void release() override { a.reset(); b.reset(); }
//   };
//   if (auto n = make_node<MulBackward>({a, b})) { n->a = save(a); n->b = save(b); set_history(out, n); }
//
// Gradients may be returned in the broadcast (output) shape: the engine sums them to the
// input's shape in one place (sum_to). Backward runs with grad mode off.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "error.h"
#include "tensor.h"

namespace lotgrad {

// ---- grad mode (thread-local) ---------------------------------------------------------
struct GradMode {
  static bool is_enabled();
  static void set_enabled(bool on);
};
// RAII: nothing is recorded while it lives.
class NoGradGuard {
 public:
  NoGradGuard() : prev_(GradMode::is_enabled()) { GradMode::set_enabled(false); }
  ~NoGradGuard() { GradMode::set_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// ---- anomaly detection (PyTorch: torch.autograd.set_detect_anomaly) --------------------
// Off by default. While on (in this thread), every op recorded for backward counts the NaN
// and Inf its floating inputs and outputs hold (one pass over each: a debugging mode), and
// run_backward
//  - refuses a root or seed gradient holding NaN/Inf, naming the first recorded op (creation
//    order) that made a NaN (else an Inf) from inputs without one, with its shapes;
//  - checks the gradients every node returns and throws AnomalyError naming the first node
//    that returned a NaN/Inf, with its input shapes and its incoming gradients' shapes.
// Off, recording an op costs one test of a thread-local flag and backward one branch per node.
struct AnomalyMode {
  static bool is_enabled();
  static void set_enabled(bool on);
};
// RAII: anomaly mode set to `on` while it lives.
class DetectAnomalyGuard {
 public:
  explicit DetectAnomalyGuard(bool on = true) : prev_(AnomalyMode::is_enabled()) { AnomalyMode::set_enabled(on); }
  ~DetectAnomalyGuard() { AnomalyMode::set_enabled(prev_); }
  DetectAnomalyGuard(const DetectAnomalyGuard&) = delete;
  DetectAnomalyGuard& operator=(const DetectAnomalyGuard&) = delete;

 private:
  bool prev_;
};

// What anomaly mode found: `op` is the node's name (e.g. "LogBackward").
class AnomalyError : public AutogradError {
 public:
  AnomalyError(const std::string& msg, std::string op_name) : AutogradError(msg), op(std::move(op_name)) {}
  std::string op;
};

// NaN and Inf elements of a tensor (zero for a non-floating one); any strides.
struct NonFiniteCount {
  int64_t nan = 0, inf = 0;
  int64_t total() const { return nan + inf; }
  std::string str() const;  // "2 nan, 1 inf", "finite"
};
NonFiniteCount count_nonfinite(const Tensor& t);

// What a node recorded in anomaly mode: its inputs' and outputs' NaN/Inf counts.
struct AnomalyNote {
  std::vector<NonFiniteCount> inputs, outputs;      // one per input (zeros for an undefined one), per output
  std::vector<std::string> input_desc, output_desc;  // "(2, 3) f32" ("none" for an undefined input)
};

struct Node;

// Where the gradient of one input goes, and the input's shape (for broadcast reduction).
struct Edge {
  std::shared_ptr<Node> fn;  // null: this input needs no gradient
  uint32_t input_nr = 0;     // which output of fn the input was
  Shape shape;
  DType dtype = DType::f32;
};

// A tensor kept for the backward pass, with the storage version at save time.
class SavedTensor {
 public:
  SavedTensor() = default;
  explicit SavedTensor(const Tensor& t);
  // Returns the tensor, or throws AutogradError if it was modified in place since it
  // was saved, or if the graph was already freed by an earlier backward.
  Tensor unpack(const Node* owner) const;
  void reset() { t_ = Tensor(); released_ = true; }
  bool defined() const { return t_.defined(); }

 private:
  Tensor t_;  // detached alias: saving never creates a reference cycle
  uint64_t version_ = 0;
  bool released_ = false;
};
inline SavedTensor save(const Tensor& t) { return SavedTensor(t); }

struct Node {
  std::vector<Edge> next;  // one per input
  uint64_t seq = 0;        // creation order; later nodes run first when both are ready
  uint32_t num_outputs = 1;
  bool released = false;
  std::unique_ptr<AnomalyNote> anomaly;  // set only when recorded in anomaly mode

  // Frees the nodes only this one holds iteratively, not by nested destructors: a chain of
  // millions of ops would otherwise overflow the stack when its last tensor dies.
  virtual ~Node();
  virtual const char* name() const = 0;
  // grads[i] is the gradient of output i (undefined if none reached it). Returns one
  // gradient per input (undefined where needs_grad(i) is false).
  virtual std::vector<Tensor> apply(std::vector<Tensor>& grads) = 0;
  // Frees saved tensors; called after apply unless retain_graph.
  virtual void release() {}

  bool needs_grad(size_t i) const { return i < next.size() && next[i].fn != nullptr; }
};

// True if grad mode is on and any input requires grad.
bool should_record(std::initializer_list<Tensor> inputs);
bool should_record(const std::vector<Tensor>& inputs);

// Connects a freshly made node to its inputs (edges and shapes). Internal helper.
void collect_edges(Node& n, const std::vector<Tensor>& inputs);

// Creates node N wired to inputs, or returns null when nothing needs recording.
template <class N, class... Args>
std::shared_ptr<N> make_node(const std::vector<Tensor>& inputs, Args&&... args) {
  if (!should_record(inputs)) return nullptr;
  auto n = std::make_shared<N>(std::forward<Args>(args)...);
  collect_edges(*n, inputs);
  return n;
}

// Marks out as output number `output_nr` of node.
void set_history(Tensor& out, const std::shared_ptr<Node>& node, uint32_t output_nr = 0);

// In anomaly mode: the first recorded op in root's graph (creation order) that made a NaN
// (else an Inf) from inputs without one, described with its shapes; "" when none did or the
// graph was recorded with anomaly mode off.
std::string anomaly_origin(const Tensor& root);

// Reverse sweep from roots with the given seed gradients (same length).
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph);

// d(sum over broadcast dims)/: reduces g to `shape` (shape broadcastable to g's shape).
Tensor sum_to(const Tensor& g, const Shape& shape);

}  // namespace lotgrad
