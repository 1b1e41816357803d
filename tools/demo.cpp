// `lotgrad demo`: a 2-layer MLP learns to classify a generated 3-arm spiral. Shows the
// whole stack at work (ops, autograd, AdamW, warm-up + cosine schedule, clipping) in a few
// seconds and prints the loss falling.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <lotgrad/lotgrad.h>

#include "checks.h"
#include "commands.h"
#include "options.h"

namespace lotgrad::cli {

namespace {
// n points per class on `classes` interleaved spiral arms, with Gaussian noise.
void make_spiral(int64_t n, int64_t classes, Generator& g, Tensor& x, Tensor& y) {
  std::vector<float> xs;
  std::vector<int64_t> ys;
  for (int64_t c = 0; c < classes; ++c)
    for (int64_t i = 0; i < n; ++i) {
      const double r = (double)i / n;
      const double t = 4.0 * r + 2.0 * M_PI * c / classes + 0.2 * g.normal();
      xs.push_back((float)(r * std::sin(t)));
      xs.push_back((float)(r * std::cos(t)));
      ys.push_back(c);
    }
  x = Tensor::from_vector(xs, {n * classes, 2});
  y = Tensor::from_vector(ys, {n * classes});
}
double accuracy(const Tensor& logits, const Tensor& y) {
  Tensor pred = argmax(logits, -1);
  std::vector<double> p = pred.to_vector(), t = y.to_vector();
  int64_t ok = 0;
  for (size_t i = 0; i < p.size(); ++i) ok += p[i] == t[i];
  return (double)ok / (double)p.size();
}
}  // namespace

int cmd_demo(int argc, char** argv) {
  CLI::App app("Trains a 2-layer MLP on a generated 3-arm spiral (AdamW, warm-up + cosine schedule, clipping) and\n"
               "prints the loss and accuracy falling. No --json.",
               "lotgrad demo");
  int64_t steps = 600, hidden = 64, seed = 0, threads = 0;
  double lr = 0.01;
  add_number(app, "--steps", steps, 10, 1e7, "optimiser steps (a line every steps/10)");
  add_number(app, "--hidden", hidden, 1, 65536, "hidden width of both layers");
  add_number(app, "--lr", lr, 1e-9, 10, "peak learning rate");
  add_number(app, "--seed", seed, 0, kMaxSeed, "seed of the data and the weights");
  add_threads_applied(app, threads);
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  Generator g((uint64_t)seed);
  Tensor x, y, xv, yv;
  make_spiral(300, 3, g, x, y);
  make_spiral(100, 3, g, xv, yv);

  nn::Sequential mlp;
  mlp.add("fc1", std::make_shared<nn::Linear>(2, hidden, g, true, 0.5))
      .add_fn([](const Tensor& h) { return gelu(h); })
      .add("fc2", std::make_shared<nn::Linear>(hidden, hidden, g, true, 0.2))
      .add_fn([](const Tensor& h) { return gelu(h); })
      .add("head", std::make_shared<nn::Linear>(hidden, 3, g, true, 0.2));
  AdamW opt(decay_groups(mlp.named_parameters()), {.lr = lr, .weight_decay = 1e-4});
  LRScheduler sched(opt, warmup_cosine(steps / 10, steps, 0.1, 0.05));
  std::printf("demo: 2-layer MLP (%lld parameters) on a 3-arm spiral, 900 training points, %d threads\n",
              (long long)mlp.num_parameters(), get_num_threads());
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = 0; step <= steps; ++step) {
    Tensor logits = mlp.forward(x);
    Tensor loss = cross_entropy(logits, y);
    if (step % (steps / 10) == 0 || step == steps) {
      NoGradGuard ng;
      std::printf("step %5lld  loss %.4f  train acc %.3f  dev acc %.3f  lr %.5f\n", (long long)step, loss.item(),
                  accuracy(logits, y), accuracy(mlp.forward(xv), yv), opt.param_groups()[0].options.lr);
    }
    if (step == steps) break;
    opt.zero_grad();
    loss.backward();
    clip_grad_norm_(mlp.parameters(), 1.0);
    opt.step();
    sched.step();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("done in %.2f s\n", secs);
  return 0;
}

}  // namespace lotgrad::cli
