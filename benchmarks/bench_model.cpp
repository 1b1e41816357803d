// Mechanism-level benchmarks:
//   lotgrad bench attention --attention NAME [--n 512,1024,...] [--batch 1] [--heads 2] [--d 32] [mechanism knobs]
//     forward and forward+backward time and peak memory of any registered mechanism.
//   lotgrad bench step --task listops|lm --attention NAME --batch 32 --seq-len N [knobs]
//     one training step (forward, backward, clipping, AdamW) of the LRA classifier (listops) or
//     of the causal character-level decoder (lm: loss at every position, vocabulary 97).
//     Under mpirun, data-parallel as `lotgrad train` is: each rank its rows of the batch and
//     the gradients summed in buckets during backward (dist/grad_reducer.h); verified first
//     against one process's gradients of the whole batch; tokens/s of the global batch, the
//     bytes each rank puts into the sums, the reduction time backward did not hide.
// The mechanism and its knobs come from the registry's declarations (cli::MechanismOptions).
// Each measurement verifies its result before timing it (finite outputs and gradients; for
// LOTFormer, mean over tokens of the output equals the mean of v).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <optional>
#include <lotgrad/dist/grad_reducer.h>
#include <lotgrad/data/chars.h>
#include <lotgrad/models/classifier.h>
#include <lotgrad/models/decoder.h>

#include "harness.h"

int bench_attention_main(int argc, char** argv);
int bench_step_main(int argc, char** argv);

namespace lotgrad::bench {
namespace {


int run_attention(const Options& opt, const nn::AttentionOptions& ao, const std::vector<int64_t>& ns, int64_t B);
// A model and the loss of one fixed random batch: what `bench step` times.
struct StepModel {
  std::shared_ptr<nn::Module> module;
  std::function<Tensor(int64_t begin, int64_t end)> loss;  // the mean loss of batch rows [begin, end)
  std::string name;
  int64_t tokens = 0;  // per step
  int64_t seq_len = 1;
};
StepModel classifier_step(const nn::EncoderConfig& enc, int64_t B, int64_t n);
StepModel decoder_step(const nn::EncoderConfig& enc, int64_t B, int64_t n);
int run_step(const Options& opt, const StepModel& m);
}  // namespace
}  // namespace lotgrad::bench

int bench_attention_main(int argc, char** argv) {
  using namespace lotgrad;
  using namespace lotgrad::bench;
  CLI::App app("Forward and forward+backward time and peak memory of any registered mechanism (--attention NAME and\n"
               "its knobs, lotgrad info) on random q, k, v (B, H, n, d), f32 (a block-input mechanism such as DeltaNet\n"
               "or H3: on a random block input x (B, n, H·d)). --causal: the causal form. Verified before timing: finite\n"
               "outputs and gradients; for LOTFormer (exact column sums), the mean over tokens of the output equals the mean\n"
               "of v. --json: one JSON object per measurement.",
               "lotgrad bench attention");
  cli::MechanismOptions mechanism(app, "softmax");
  AttentionShape shape;
  shape.add_options(app, "d");
  Options opt;
  add_harness_options(app, opt);
  nn::AttentionOptions ao;
  cli::after_parse(app, [&] {
    ao = mechanism.options(shape.heads);
    ao.d_head = shape.dim;
  });
  return run_bench(app, argc, argv, [&] { return run_attention(opt, ao, shape.lengths(opt.quick), shape.batch); });
}

int bench_step_main(int argc, char** argv) {
  using namespace lotgrad;
  using namespace lotgrad::bench;
  CLI::App app("One training step (forward, backward, gradient clipping, AdamW) on random tokens: the LRA classifier\n"
               "(listops) or the causal character-level decoder (lm; its attention is causal): ms/step, tokens/s, peak\n"
               "memory. Verified before timing: a finite loss and parameters. --json: one JSON object per measurement.",
               "lotgrad bench step");
  cli::MechanismOptions mechanism(app, "softmax");
  std::string task = "listops";
  int64_t B = 32, n = 0, depth = 2, D = 64, H = 2, mlp = 128;
  cli::add_choice(app, "--task", task, {"listops", "lm"}, "the task whose model is built");
  cli::add_setting(app, "batch", B);
  cli::add_number(app, "--seq-len", n, 0, 1 << 20, "tokens per example (0: 2048 for listops, 256 for lm)");
  cli::add_setting(app, "depth", depth);
  cli::add_setting(app, "d-model", D);
  cli::add_setting(app, "heads", H);
  cli::add_setting(app, "mlp", mlp);
  Options opt;
  opt.runs = 5;
  add_harness_options(app, opt);
  nn::EncoderConfig enc;
  cli::after_parse(app, [&] {
    cli::check_heads(D, H);
    if (n == 0) n = task == "lm" ? 256 : 2048;
    enc.depth = depth;
    enc.d_model = D;
    enc.n_heads = H;
    enc.mlp_hidden = mlp;
    enc.attention = {mechanism.options(H)};
    if (task == "lm") enc.attention[0].causal = true;
    Generator g(0);
    nn::make_attention(enc.attention[0], g);  // a mechanism without a causal form is refused here, as a parse error
  });
  return run_bench(app, argc, argv, [&] {
    return run_step(opt, task == "lm" ? decoder_step(enc, B, n) : classifier_step(enc, B, n));
  });
}

namespace lotgrad::bench {
namespace {
int run_attention(const Options& opt, const nn::AttentionOptions& ao, const std::vector<int64_t>& ns, int64_t B) {
  const int64_t H = ao.n_heads, d = ao.d_head;
  // The mean test needs exact column sums: LOTFormer's (its plans end on the marginals). Not
  // caps.doubly_stochastic: Sinkformer's columns after its few half-steps are only close to 1,
  // and at n < 256 the test fails by ~1e-2.
  const bool doubly_stochastic = ao.name == "lotformer";
  Harness h("attention", opt);
  Generator gen(0);
  auto mech = nn::make_attention(ao, gen);
  if (!opt.json) std::printf("# mechanism %s, B=%lld H=%lld d=%lld\n", mech->type_name().c_str(), (long long)B, (long long)H, (long long)d);
  // A block-input mechanism (DeltaNet, H3, ...) owns its projections: it gets the block input
  // x (B, n, H·d) and its input gradient is checked; the others get q, k, v.
  const bool block = nn::mechanism_spec(ao.name).caps.block_input;
  for (int64_t n : ns) {
    Generator g(n);
    Tensor q = randn({B, H, n, d}, g), k = randn({B, H, n, d}, g), v = randn({B, H, n, d}, g);
    Tensor x = block ? randn({B, n, H * d}, g) : Tensor();
    Tensor gy = randn({B, H, n, d}, g);
    Tensor out;
    auto verify = [&]() -> std::string {
      if (out.shape() != q.shape()) return "wrong output shape";
      std::string e = check_finite(out, "output");
      if (!e.empty()) return e;
      if (doubly_stochastic) {  // columns sum to 1: mean over tokens of A v = mean of v
        double worst = 0;
        Tensor mo = mean(out, {2}), mv = mean(v, {2});
        std::vector<double> a = mo.to_vector(), b = mv.to_vector();
        for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
        if (worst > 1e-3) return "mean over tokens differs from the mean of v by " + std::to_string(worst);
      }
      return "";
    };
    auto run = [&](const Tensor& qq, const Tensor& kk, const Tensor& vv, const Tensor& xx) {
      return block ? mech->forward_block(xx, Tensor()) : mech->forward(qq, kk, vv, Tensor());
    };
    const std::string name = ao.name + (ao.causal ? " causal" : "") + " n=" + std::to_string(n);
    // forward (no graph)
    reset_storage_peak();
    int64_t base = storage_bytes_in_use();
    Measurement mf = h.measure(name, "fwd", [&] { NoGradGuard ng; out = run(q, k, v, x); }, verify, 0, 0);
    mf.extra.push_back({"peak_MB", (storage_bytes_peak() - base) / 1048576.0});
    mf.tags.push_back({"mechanism", mech->type_name()});
    h.emit(mf);
    // forward + backward
    Tensor qg = q.detach().requires_grad_(), kg = k.detach().requires_grad_(), vg = v.detach().requires_grad_();
    Tensor xg = block ? x.detach().requires_grad_() : Tensor();
    out = Tensor();
    reset_storage_peak();
    base = storage_bytes_in_use();
    Measurement mb = h.measure(name, "fwd+bwd", [&] {
      for (Tensor* t : {&qg, &kg, &vg, &xg})
        if (t->defined()) t->zero_grad();
      mech->zero_grad();
      Tensor y = run(qg, kg, vg, xg);
      y.backward(gy);
      out = y.detach();
    }, [&]() -> std::string {
      std::string e = verify();
      if (e.empty()) e = block ? check_finite(xg.grad(), "dx") : check_finite(qg.grad(), "dq");
      if (e.empty() && !block) e = check_finite(vg.grad(), "dv");
      return e;
    }, 0, 0);
    mb.extra.push_back({"peak_MB", (storage_bytes_peak() - base) / 1048576.0});
    mb.extra.push_back({"rss_MB", peak_rss_mb()});
    mb.tags.push_back({"mechanism", mech->type_name()});
    h.emit(mb);
  }
  return h.all_ok() ? 0 : 1;
}

std::string step_name(const std::string& task, const nn::EncoderConfig& enc, int64_t B, int64_t n) {
  return task + " " + enc.attention[0].name + " B=" + std::to_string(B) + " n=" + std::to_string(n);
}

StepModel classifier_step(const nn::EncoderConfig& enc, int64_t B, int64_t n) {
  models::ClassifierConfig cfg;
  cfg.vocab = 32;
  cfg.max_len = n;
  cfg.num_classes = 10;
  cfg.encoder = enc;
  Generator gen(0);
  auto model = std::make_shared<models::SequenceClassifier>(cfg, gen);
  Tensor tokens = randint(1, 16, {B, n}, gen), labels = randint(0, 10, {B}, gen);
  return {model,
          [=](int64_t b, int64_t e) {
            return cross_entropy(model->forward(tokens.narrow(0, b, e - b)), labels.narrow(0, b, e - b));
          },
          step_name("listops", enc, B, n), B * n, n};
}

StepModel decoder_step(const nn::EncoderConfig& enc, int64_t B, int64_t n) {
  models::DecoderConfig cfg;
  cfg.vocab = data::kCharVocab;
  cfg.max_len = n;
  cfg.blocks = enc;
  Generator gen(0);
  auto model = std::make_shared<models::DecoderLM>(cfg, gen);
  const int64_t V = cfg.vocab;
  Tensor tokens = randint(0, V, {B, n}, gen), targets = randint(0, V, {B * n}, gen);
  return {model,
          [=](int64_t b, int64_t e) {
            return cross_entropy(model->forward(tokens.narrow(0, b, e - b)).reshape({(e - b) * n, V}),
                                 targets.narrow(0, b * n, (e - b) * n));
          },
          step_name("lm", enc, B, n) + (enc.attention[0].causal ? " causal" : ""), B * n, n};
}

// Data-parallel: the largest difference between the summed gradients and one process's
// gradients of the whole batch, relative to the largest gradient element ("" when within tol).
std::string check_reduced(nn::Module& model, const StepModel& sm, int64_t B, dist::GradReducer& red, int64_t b, int64_t e) {
  std::vector<Tensor> ps = model.parameters();
  for (auto& p : ps) p.zero_grad();
  sm.loss(0, B).backward();  // every rank holds the whole batch: the reference
  std::vector<std::vector<double>> want;
  for (auto& p : ps) want.push_back(p.grad().to_vector());
  for (auto& p : ps) p.zero_grad();
  red.begin();
  mul(sm.loss(b, e), (double)(e - b) / (double)B).backward();
  red.finish();
  double worst = 0, scale = 0;
  for (size_t k = 0; k < ps.size(); ++k) {
    const std::vector<double> got = ps[k].grad().to_vector();
    for (size_t i = 0; i < got.size(); ++i) {
      worst = std::max(worst, std::fabs(got[i] - want[k][i]));
      scale = std::max(scale, std::fabs(want[k][i]));
    }
  }
  if (worst <= 1e-4 * scale) return "";
  return "summed gradients differ from one process's by " + std::to_string(worst) + " (largest element " + std::to_string(scale) + ")";
}

int run_step(const Options& opt, const StepModel& sm) {
  dist::Comm& comm = dist::Comm::world();
  if (comm.rank() != 0 && !std::freopen("/dev/null", "w", stdout)) return 1;  // rank 0 reports
  Harness h("step", opt);
  nn::Module& model = *sm.module;
  AdamW optim(decay_groups(model.named_parameters()), {.lr = 1e-4, .weight_decay = 0.0, .beta2 = 0.98});
  const int64_t B = sm.tokens / sm.seq_len;
  const data::Shard shard{comm.rank(), comm.size()};
  const int64_t b = shard.begin(B), e = shard.end(B);
  if (e <= b) throw std::invalid_argument("bench step: --batch " + std::to_string(B) + " gives rank " + std::to_string(comm.rank()) + " no row");
  std::optional<dist::GradReducer> red;
  if (comm.distributed()) red.emplace(comm, model.named_parameters());
  std::string reduce_error = red ? check_reduced(model, sm, B, *red, b, e) : "";
  double loss_v = 0;
  auto step = [&] {
    optim.zero_grad();
    Tensor loss = sm.loss(b, e);
    if (red) {
      red->begin();
      mul(loss, (double)(e - b) / (double)B).backward();
      red->finish();
    } else {
      loss.backward();
    }
    clip_grad_norm_(model.parameters(), 5.0);
    optim.step();
    loss_v = loss.item();
  };
  reset_storage_peak();
  const int64_t base = storage_bytes_in_use();
  Measurement m = h.measure(sm.name + (red ? " ranks=" + std::to_string(comm.size()) : ""), "step", step, [&]() -> std::string {
                              if (!reduce_error.empty()) return reduce_error;
                              if (!std::isfinite(loss_v)) return "loss is not finite";
                              for (auto& p : model.parameters()) {
                                std::string e = check_finite(p, "a parameter");
                                if (!e.empty()) return e;
                              }
                              return "";
                            }, 0, 0);
  m.extra.push_back({"tokens_per_s", m.median_s > 0 ? (double)sm.tokens / m.median_s : 0});
  m.extra.push_back({"peak_MB", (storage_bytes_peak() - base) / 1048576.0});
  m.extra.push_back({"reserved_MB", storage_bytes_reserved_peak() / 1048576.0});
  m.extra.push_back({"rss_MB", peak_rss_mb()});
  if (red) {
    m.extra.push_back({"ranks", (double)comm.size()});
    m.extra.push_back({"allreduce_bytes_per_rank", (double)red->stats().bytes});
    m.extra.push_back({"unhidden_allreduce_ms", 1e3 * red->stats().total_wait_s / (double)std::max<int64_t>(red->stats().steps, 1)});
  }
  m.tags.push_back({"model", std::to_string(model.num_parameters()) + " parameters"});
  h.emit(m);
  return h.all_ok() ? 0 : 1;
}
}  // namespace
}  // namespace lotgrad::bench
