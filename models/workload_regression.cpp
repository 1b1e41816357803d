// In-context linear regression as a Workload (data/icl_regression.h). Two layouts:
//   interleaved (Garg et al., arXiv 2208.01066): tokens x_1, [y_1, 0..], x_2, ... (2n, d); the
//     read-out at x_k predicts y_k from the pairs before it; the metric is the squared error
//     averaged over the n read-outs.
//   paired (Li, Rawat & Oymak, arXiv 2407.10005): tokens [x_i; y_i] for n examples and a query
//     [x; 0] (n + 1, d + 1); the read-out at the query predicts its (noiseless) label; the metric
//     is that squared error, the risk the closed forms give (one-step GD 1.76 / 5.19 at d = 8,
//     n = 32 for the iid / heterogeneous designs).
// Training prompts are drawn fresh at every step (prompt s·B + r of the seeded stream), under
// the curriculum when one is set; dev and test are fixed sets from distant parts of the stream.
#include <cmath>
#include <filesystem>

#include "../core/autograd.h"
#include "../data/icl_regression.h"
#include "../ops/elementwise.h"
#include "../ops/loss.h"
#include "decoder.h"
#include "workload.h"

namespace lotgrad::models {

namespace {
constexpr int64_t kValFirst = int64_t(1) << 40, kTestFirst = int64_t(1) << 41;  // stream offsets
// --x-std, 0 meaning 1/sqrt(d) (Kuang et al.: Var(y) = 1 whatever d).
double x_std(const TrainConfig& cfg) { return cfg.x_std > 0 ? cfg.x_std : 1.0 / std::sqrt((double)cfg.dim); }

class RegressionWorkload : public Workload {
 public:
  RegressionWorkload(const TrainConfig& cfg, std::ostream& log, Generator& gen, std::shared_ptr<Generator> dgen,
                     const data::Shard& shard)
      : cfg_(cfg), shard_(shard), paired_(cfg.layout == "paired"), model_(config(cfg), gen, dgen) {
    if (cfg.data_dir.empty()) {
      val_ = data::generate_icl_regression(cfg.gen_val, options(cfg.dim, cfg.points), kValFirst);
      test_ = data::generate_icl_regression(cfg.gen_test, options(cfg.dim, cfg.points), kTestFirst);
      if (!cfg.write_data.empty()) write(cfg.write_data);
    } else {
      read(cfg.data_dir);
    }
    if (!cfg.quiet)
      log << "data: icl-regression" << (cfg.data_dir.empty() ? " (generated; training prompts drawn fresh each step)" : " from " + cfg.data_dir)
          << ": d " << cfg.dim << ", " << cfg.points << " examples per prompt, x std "
          << x_std(cfg) << ", design " << cfg.design << ", layout "
          << cfg.layout << "; val " << val_.size() << ", test " << test_.size() << " prompts\n";
  }

  nn::Module& module() override { return model_; }
  StepOutput train_step(int64_t step) override {
    std::vector<data::IclPrompt> prompts;
    for (int64_t r = shard_.begin(cfg_.batch); r < shard_.end(cfg_.batch); ++r) {  // this rank's prompts
      const int64_t i = step * cfg_.batch + r;
      if (!train_.empty()) prompts.push_back(train_[(size_t)(i % (int64_t)train_.size())]);
      else prompts.push_back(data::icl_prompt(curriculum_options(step), i));
    }
    Tensor pred, target;
    forward(prompts, pred, target);
    const double values = (double)pred.numel();  // the loss is their mean
    StepOutput out{mse_loss(pred, target), 0, values, (double)(pred.size(0) * pred.size(1)), values};
    out.metric_sum = out.loss.item() * values;
    return out;
  }
  Score evaluate(const std::string& split, int64_t max_batches, const EvalProgress& progress) override {
    NoGradGuard ng;
    model_.eval();
    const std::vector<data::IclPrompt>& d = pick(split);
    const int64_t n = max_batches > 0 ? std::min<int64_t>((int64_t)d.size(), max_batches * cfg_.batch) : (int64_t)d.size();
    double sum = 0, count = 0;
    for (int64_t first = shard_.rank * cfg_.batch; first < n; first += shard_.count * cfg_.batch) {  // this rank's batches
      const std::vector<data::IclPrompt> part(d.begin() + first, d.begin() + std::min(n, first + cfg_.batch));
      Tensor pred, target;
      forward(part, pred, target);
      sum += mse_loss(pred, target, "sum").item();
      count += (double)pred.numel();
      if (progress) progress(first + (int64_t)part.size(), n);
    }
    model_.train();
    return {sum, count};
  }
  std::string references(const std::string& split) override;
  double baseline(const std::string& split) override;  // least squares on the split's prompts
  std::string breakdown(const std::string& split) override;
  std::string sample_weights() const;
  int64_t eval_examples(const std::string& split) const override { return (int64_t)pick(split).size(); }

 private:
  // The generator's options for prompts of `dims` active dimensions and `points` examples
  // (paired: one more point, the query, with a noiseless label).
  data::IclRegressionOptions options(int64_t dims, int64_t points) const {
    data::IclRegressionOptions o;
    o.dim = cfg_.dim;
    o.active_dims = dims < cfg_.dim ? dims : 0;
    o.points = points + (paired_ ? 1 : 0);
    o.seed = (uint64_t)cfg_.seed;
    o.x_std = x_std(cfg_);
    o.point_noise_std = context_noise(points);
    if (paired_) o.point_noise_std.push_back(0.0);
    return o;
  }
  std::vector<double> context_noise(int64_t points) const {
    if (cfg_.design == "hetero") return data::heterogeneous_noise(points, 10.0);
    return std::vector<double>((size_t)points, cfg_.noise);
  }
  data::IclRegressionOptions curriculum_options(int64_t step) const {
    if (cfg_.curriculum <= 0) return options(cfg_.dim, cfg_.points);
    const int64_t k = step / cfg_.curriculum;
    return options(std::min(cfg_.dim, cfg_.dims_start + k), std::min(cfg_.points, cfg_.points_start + 2 * k));
  }
  // The model's predictions and their targets, (B, n) interleaved or (B, 1) paired.
  void forward(const std::vector<data::IclPrompt>& prompts, Tensor& pred, Tensor& target) {
    const int64_t B = (int64_t)prompts.size(), d = cfg_.dim, P = prompts[0].points;
    const int64_t rows = paired_ ? P : 2 * P, width = paired_ ? d + 1 : d;
    std::vector<float> tok((size_t)(B * rows * width), 0.0f), y((size_t)(B * (paired_ ? 1 : P)));
    for (int64_t b = 0; b < B; ++b) {
      const data::IclPrompt& p = prompts[(size_t)b];
      float* t = tok.data() + b * rows * width;
      for (int64_t i = 0; i < P; ++i) {
        float* row = t + (paired_ ? i : 2 * i) * width;
        for (int64_t c = 0; c < d; ++c) row[c] = (float)p.x(i)[c];
        const bool query = paired_ && i == P - 1;
        if (paired_ && !query) row[d] = (float)p.ys[(size_t)i];
        if (!paired_) t[(2 * i + 1) * width] = (float)p.ys[(size_t)i];
        if (!paired_) y[(size_t)(b * P + i)] = (float)p.ys[(size_t)i];
        if (query) y[(size_t)b] = (float)p.ys[(size_t)i];
      }
    }
    const Tensor out = model_.forward(Tensor::from_vector(tok, {B, rows, width}));  // (B, rows)
    pred = paired_ ? out.narrow(1, P - 1, 1) : out.reshape({B, P, 2}).select(2, 0);
    target = Tensor::from_vector(y, {B, paired_ ? 1 : P});
  }
  RegressorConfig config(const TrainConfig& cfg) const {
    RegressorConfig c;
    c.d_in = cfg.dim + (paired_ ? 1 : 0);
    c.max_len = paired_ ? cfg.points + 1 : 2 * cfg.points;
    c.pos = cfg.pos;
    c.init = cfg.init;
    c.blocks = encoder_config(cfg);
    return c;
  }
  const std::vector<data::IclPrompt>& pick(const std::string& split) const {
    return split == "train" ? (train_.empty() ? val_ : train_) : split == "val" ? val_ : test_;
  }
  std::string file(const std::string& dir, const std::string& split) const { return dir + "/icl_" + split + ".txt"; }
  void write(const std::string& dir) const {
    std::filesystem::create_directories(dir);
    data::write_icl_prompts(file(dir, "train"), data::generate_icl_regression(cfg_.gen_train, options(cfg_.dim, cfg_.points), 0));
    data::write_icl_prompts(file(dir, "val"), val_);
    data::write_icl_prompts(file(dir, "test"), test_);
  }
  void read(const std::string& dir);

  TrainConfig cfg_;
  data::Shard shard_;
  bool paired_;
  IclRegressor model_;
  std::vector<data::IclPrompt> train_, val_, test_;  // train_ only when read from files
};

void RegressionWorkload::read(const std::string& dir) {
  train_ = data::read_icl_prompts(file(dir, "train"));
  val_ = data::read_icl_prompts(file(dir, "val"));
  test_ = data::read_icl_prompts(file(dir, "test"));
  const int64_t want = cfg_.points + (paired_ ? 1 : 0);
  for (const auto* s : {&train_, &val_, &test_})
    for (const auto& p : *s)
      if (p.dim != cfg_.dim || p.points != want)
        throw std::invalid_argument(dir + ": prompts of d " + std::to_string(p.dim) + " with " + std::to_string(p.points) +
                                    " points, but the run asks for --dim " + std::to_string(cfg_.dim) + " and " +
                                    std::to_string(want) + " points (--points " + std::to_string(cfg_.points) +
                                    (paired_ ? " plus the query)" : ")"));
  if (train_.empty() || val_.empty() || test_.empty())
    throw std::invalid_argument(dir + ": a split holds no prompts (train " + std::to_string(train_.size()) + ", val " +
                                std::to_string(val_.size()) + ", test " + std::to_string(test_.size()) + ")");
}

double RegressionWorkload::baseline(const std::string& split) {
  double ls = 0, count = 0;
  for (const auto& p : pick(split)) {
    const std::vector<double> pr = data::least_squares_predictions(p);
    for (int64_t i = paired_ ? p.points - 1 : 0; i < p.points; ++i, ++count) ls += std::pow(pr[(size_t)i] - p.ys[(size_t)i], 2);
  }
  return ls / std::max(count, 1.0);
}

// Least squares on the same prompts (empirical), and for the paired layout the closed-form
// optima of one-step preconditioned GD (what one linear-attention layer can reach) and of
// weighted one-step GD (what one H3 layer can reach).
std::string RegressionWorkload::references(const std::string& split) {
  char b[256];
  std::snprintf(b, sizeof b, "min-norm least squares %.4f", baseline(split));
  std::string out = b;
  if (paired_) {
    std::vector<double> var;
    for (double s : context_noise(cfg_.points)) var.push_back(s * s);
    std::snprintf(b, sizeof b, ", optimal one-step GD %.4f, optimal weighted one-step GD %.4f",
                  data::pgd_risk(cfg_.dim, std::vector<double>(var.size(), 1.0), var), data::h3_optimal_risk(cfg_.dim, var));
    out += b;
  }
  return out;
}
// Interleaved: the squared error of the read-out at x_k (k examples before it), per k, beside
// min-norm least squares from the same k examples (max(d - k, 0) in expectation, noiseless).
std::string RegressionWorkload::breakdown(const std::string& split) {
  if (paired_) return sample_weights();
  NoGradGuard ng;
  model_.eval();
  const auto& d = pick(split);
  const int64_t P = d[0].points;
  std::vector<double> model_err((size_t)P, 0.0), ls_err((size_t)P, 0.0);
  for (size_t first = 0; first < d.size(); first += (size_t)cfg_.batch) {
    const std::vector<data::IclPrompt> part(d.begin() + (int64_t)first, d.begin() + (int64_t)std::min(d.size(), first + (size_t)cfg_.batch));
    Tensor pred, target;
    forward(part, pred, target);
    const std::vector<double> e = mul(sub(pred, target), sub(pred, target)).to_vector();  // (b, P)
    for (size_t i = 0; i < e.size(); ++i) model_err[i % (size_t)P] += e[i];
    for (const auto& p : part) {
      const std::vector<double> pr = data::least_squares_predictions(p);
      for (int64_t k = 0; k < P; ++k) ls_err[(size_t)k] += std::pow(pr[(size_t)k] - p.ys[(size_t)k], 2);
    }
  }
  model_.train();
  std::string out = "examples before   squared error   least squares\n";
  char b[96];
  for (int64_t k = 0; k < P; ++k) {
    std::snprintf(b, sizeof b, "%15lld   %13.4f   %13.4f\n", (long long)k, model_err[(size_t)k] / (double)d.size(),
                  ls_err[(size_t)k] / (double)d.size());
    out += b;
  }
  return out;
}
// Paired, one layer with a time filter (H3): the weight its filter gives each in-context
// point (point i sits n + 1 − i tokens before the query), per head, beside the optimal
// weighted one-step GD's ω_i ∝ 1/(d + 1 + σ_i²); both scaled to sum to 1 over the points.
std::string RegressionWorkload::sample_weights() const {
  const auto& layers = model_.blocks->layers;
  if (layers.size() != 1) return "";
  const int64_t n = cfg_.points;
  const Tensor f = layers[0]->attn->mechanism->time_filter(n + 1);  // (H, n + 1)
  if (!f.defined()) return "";
  const std::vector<double> noise = context_noise(n);
  std::vector<double> opt((size_t)n);
  for (int64_t i = 0; i < n; ++i) opt[(size_t)i] = 1.0 / ((double)cfg_.dim + 1.0 + noise[(size_t)i] * noise[(size_t)i]);
  auto scaled = [](std::vector<double> w) {
    double s = 0;
    for (double x : w) s += x;
    for (double& x : w) x = s != 0 ? x / s : 0.0;
    return w;
  };
  opt = scaled(opt);
  const int64_t H = f.size(0);
  std::vector<std::vector<double>> heads;
  for (int64_t h = 0; h < H; ++h) {
    std::vector<double> w((size_t)n);
    for (int64_t i = 0; i < n; ++i) w[(size_t)i] = f.at({h, n - i});  // point i + 1, lag n − i
    heads.push_back(scaled(w));
  }
  std::string out = "point";
  for (int64_t h = 0; h < H; ++h) out += "   filter head " + std::to_string(h);
  out += "   optimal 1/(d+1+sigma^2)\n";
  char b[64];
  for (int64_t i = 0; i < n; ++i) {
    std::snprintf(b, sizeof b, "%5lld", (long long)(i + 1));
    out += b;
    for (int64_t h = 0; h < H; ++h) {
      std::snprintf(b, sizeof b, "   %13.5f", heads[(size_t)h][(size_t)i]);
      out += b;
    }
    std::snprintf(b, sizeof b, "   %23.5f\n", opt[(size_t)i]);
    out += b;
  }
  return out;
}
}  // namespace

std::unique_ptr<Workload> make_regression_workload(const TrainConfig& cfg, std::ostream& log, Generator& gen,
                                                   std::shared_ptr<Generator> dgen, const data::Shard& shard) {
  return std::make_unique<RegressionWorkload>(cfg, log, gen, dgen, shard);
}

}  // namespace lotgrad::models
