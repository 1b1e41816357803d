#include "divergence.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "../core/autograd.h"
#include "../core/fault.h"
#include "../core/io.h"
#include "../core/iter.h"
#include "../core/parse.h"

namespace lotgrad::models {

namespace {
std::string g(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}
}  // namespace

NonFiniteParameter diagnose_nonfinite(const nn::Module& m, FiniteCheck what) {
  std::vector<Tensor> ts;
  std::vector<std::string> names;
  for (const auto& [name, t] : m.named_parameters()) {
    names.push_back(name);
    ts.push_back(t);
  }
  const std::vector<NonFiniteTensor> bad = list_nonfinite(ts, names, what);
  if (bad.empty()) return {};
  const NonFiniteTensor& f = bad.front();
  const Tensor& p = ts[(size_t)f.tensor_index];
  const Tensor x = f.in_grad ? p.grad() : p;
  std::string s = std::string(f.in_grad ? "gradient" : "value") + " of '" + f.name + "' " + describe(x) + " holds " +
                  f.count.str() + " of " + std::to_string(f.numel) + " values";
  if (auto r = find_nonfinite({p}, {f.name}, f.in_grad ? FiniteCheck::grads : FiniteCheck::values))
    s += " (first at index " + shape_str(r->index) + ")";
  if (bad.size() > 1) {
    NonFiniteCount all;
    for (const auto& b : bad) {
      all.nan += b.count.nan;
      all.inf += b.count.inf;
    }
    s += "; in all " + std::to_string(bad.size()) + " tensors hold " + all.str();
  }
  return {f.name, s};
}

namespace {
// "last.ckpt (step 200)", or the file alone when its step cannot be read.
std::string with_step(const std::string& path) {
  try {
    const Checkpoint ck = load_checkpoint(path);
    if (ck.metadata.count("step")) return path + " (step " + ck.metadata.at("step") + ")";
  } catch (const std::exception&) {
  }
  return path;
}
}  // namespace

// What to resume from: last.ckpt and best.ckpt with their steps (a fresh run writes last.ckpt
// at step 0), or that there is none.
std::string StepChecks::advice() const {
  namespace fs = std::filesystem;
  if (!fs::exists(last_))
    return "no last.ckpt was written (it comes every --checkpoint-every steps): start again with a lower --lr";
  std::string s = "resume from " + with_step(last_) + " with: lotgrad train --out " + out_ +
                  " --resume --override and a lower --lr";
  if (fs::exists(best_)) s += "; the best-on-dev model is in " + with_step(best_);
  return s;
}

StepChecks::StepChecks(nn::Module& m, const TrainConfig& cfg, std::string last_ckpt, std::string best_ckpt)
    : m_(m),
      params_(m.parameters()),
      anomaly_(cfg.detect_anomaly),
      clip_(cfg.clip),
      last_(std::move(last_ckpt)),
      best_(std::move(best_ckpt)),
      out_(cfg.out_dir),
      fault_(FaultNanGrad::from_env()) {}

void StepChecks::fail(const char* check, int64_t step, double lv, const std::string& what, const std::string& parameter,
                      bool stepped) const {
  // Data-parallel: loss, gradients and values are the sums every rank holds alike, so every
  // rank fails here together; an anomaly in one rank's backward pass is that rank's alone.
  const std::string c = check;
  const bool collective = note_ && c != "anomaly";
  const std::string ranks = collective && c != "values" ? note_(c) : "";
  DivergenceError e("train: step " + std::to_string(step) + " diverged: the loss is " + g(lv) + "; " + what + ranks +
                            (stepped ? ". Nothing was written: " : ". The optimiser did not step and nothing was written: ") +
                            advice(),
                        step, lv, parameter);
  e.collective = collective;
  throw e;
}

double StepChecks::loss(int64_t step, const Tensor& loss) const {
  const double lv = loss.item();
  if (std::isfinite(lv)) return lv;
  NonFiniteParameter bad = diagnose_nonfinite(m_, FiniteCheck::values);
  if (bad.text.empty()) {
    const std::string origin = anomaly_ ? anomaly_origin(loss) : "";
    bad.text = "every parameter is finite, so the forward pass made it; " +
               (!anomaly_ ? "--detect-anomaly names the op" : origin.empty() ? "anomaly mode saw no recorded op make it" : origin);
  }
  fail("loss", step, lv, bad.text, bad.parameter);
}

void StepChecks::backward(int64_t step, const Tensor& loss, double lv) const {
  try {
    loss.backward();
  } catch (const AnomalyError& e) {
    fail("anomaly", step, lv, e.what(), "");
  }
  if (step == fault_.step && !note_) fault_.apply(m_);
}

void StepChecks::gradients(int64_t step, double lv) const {
  double norm = NAN;
  try {
    norm = clip_ > 0 ? clip_grad_norm_(params_, clip_, 2.0, /*error_if_nonfinite=*/true) : grad_norm(params_);
  } catch (const NonFiniteError&) {
  }
  if (std::isfinite(norm)) return;
  const NonFiniteParameter bad = diagnose_nonfinite(m_, FiniteCheck::grads);
  const std::string why = bad.text.empty() ? "the gradient norm overflowed to " + std::to_string(norm) : bad.text;
  fail("gradients", step, lv, why + (anomaly_ ? "" : " (--detect-anomaly names the op that made it)"), bad.parameter);
}

void StepChecks::values(int64_t step, double lv) const {
  if (!find_nonfinite(params_, {}, FiniteCheck::values)) return;
  const NonFiniteParameter bad = diagnose_nonfinite(m_, FiniteCheck::values);
  fail("values", step, lv, "after the optimiser step, the " + bad.text, bad.parameter, /*stepped=*/true);
}

void LossWatch::start(int64_t step, double loss) {
  first_ = loss;
  first_step_ = step;
}

std::string LossWatch::observe(int64_t step, int64_t steps, double window_loss) {
  last_ = window_loss;
  last_step_ = step;
  if (!warning_.empty() || first_ == 0 || !(window_loss > kFactor * std::fabs(first_))) return "";
  warning_ = "the loss rose from " + g(first_) + " (step " + std::to_string(first_step_) + ") to " + g(window_loss) +
             " (the mean of steps " + std::to_string(step - steps + 1) + "-" + std::to_string(step) + "), over " +
             g(kFactor) + "x: the run is unstable; a lower --lr may help";
  return warning_;
}

std::string LossWatch::summary() const {
  if (warning_.empty()) return "";
  return warning_ + "; the last mean loss was " + g(last_) + " (to step " + std::to_string(last_step_) + ")";
}

FaultNanGrad FaultNanGrad::from_env() {
  FaultNanGrad f;
  const char* v = std::getenv("LOTGRAD_FAULT_NAN_GRAD");
  if (!v || !*v || !fault::armed_on_this_rank()) return f;
  const std::string text = v;
  const size_t colon = text.find(':');
  const std::optional<double> n = parse_number(text.substr(0, colon));
  if (!n || *n < 1 || *n != std::floor(*n))
    throw std::invalid_argument("LOTGRAD_FAULT_NAN_GRAD=\"" + text + "\": expected <step>[:<parameter>] with a step >= 1");
  f.step = (int64_t)*n;
  if (colon != std::string::npos) f.parameter = text.substr(colon + 1);
  return f;
}

void FaultNanGrad::apply(nn::Module& m) const {
  for (auto& [name, p] : m.named_parameters()) {
    if (parameter.empty() ? !p.grad().defined() : name != parameter) continue;
    Tensor g = p.grad();
    if (!g.defined())
      throw std::invalid_argument("LOTGRAD_FAULT_NAN_GRAD: parameter '" + name + "' has no gradient at step " +
                                  std::to_string(step));
    dispatch_float(g.dtype(), "LOTGRAD_FAULT_NAN_GRAD", [&]<class T>() { g.data_ptr<T>()[0] = std::nan(""); });
    g.bump_version();
    return;
  }
  throw std::invalid_argument("LOTGRAD_FAULT_NAN_GRAD: no parameter '" + parameter + "' with a gradient at step " +
                              std::to_string(step));
}

}  // namespace lotgrad::models
