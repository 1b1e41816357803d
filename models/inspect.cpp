// `lotgrad inspect`: what a trained model's attention does on real examples (trainer.h).
#include <algorithm>
#include <cmath>

#include "../core/autograd.h"
#include "../core/parallel.h"
#include "../nn/probe.h"
#include "run_config.h"
#include "task.h"
#include "trainer.h"
#include "workload.h"

namespace lotgrad::models {

std::vector<HeadInspection> inspect_checkpoint(const TrainConfig& cfg_in, const std::string& path, const std::string& split,
                                               int64_t count, std::ostream& log) {
  if (task_spec(cfg_in.task).kind != TaskKind::classify)
    throw std::invalid_argument("inspect: task " + cfg_in.task + " is not supported yet (the LRA classification tasks are)");
  TrainConfig cfg = cfg_in;
  cfg.pack = false;  // keep every position where it is
  if (cfg.threads > 0) set_num_threads(cfg.threads);
  TaskData t = load_task(cfg, log);
  Generator g(cfg.seed);
  Model m = build_model(cfg, t, g, std::make_shared<Generator>(0));
  if (!m.single) throw std::invalid_argument("inspect: paired tasks (retrieval) are not supported");
  load_weights(m.module(), load_checkpoint(path), path);
  m.module().eval();
  const data::Dataset& d = split == "test" ? t.test : split == "val" ? t.val : t.train;
  if (split != "test" && split != "val" && split != "train") throw std::invalid_argument("inspect: --split must be train, val or test");
  SequenceClassifier& model = *m.single;
  const auto& layers = model.encoder->layers;
  const int64_t H = cfg.heads;
  std::vector<HeadInspection> out((size_t)((int64_t)layers.size() * H));
  const std::vector<std::string> mech = layer_mechanisms(cfg);
  for (size_t l = 0; l < layers.size(); ++l)
    for (int64_t h = 0; h < H; ++h) out[l * (size_t)H + (size_t)h] = {(int64_t)l, h, mech[l]};
  NoGradGuard ng;
  const int64_t k = std::min<int64_t>(count, (int64_t)d.size());
  for (int64_t e = 0; e < k; ++e) {
    data::Batch b = data::collate(d, {e});
    if (zero_mask_on(cfg)) mask_zero_tokens(b);
    Tensor x, mask;
    model.embed_input(b.tokens, b.mask, x, mask);
    for (size_t l = 0; l < layers.size(); ++l) {
      auto& layer = *layers[l];
      const Tensor A = nn::probe_attention(*layer.attn, layer.ln1 ? layer.ln1->forward(x) : x, mask);  // (1, H, n, n)
      const nn::AttentionStats st = nn::attention_stats(A, mask, -1.0);  // no rank: O(n^3) at n ~ 1000
      const int64_t n = A.size(2);
      const auto valid = nn::valid_positions(mask, 1, n)[0];
      const double nv = (double)valid.size();
      std::vector<double> bound = layer.attn->mechanism->weight_bound((int64_t)valid.size());  // per head, or none
      bound.resize((size_t)H, 0.0);
      const std::vector<double> av = A.to_vector(), rmax = st.row_max.to_vector(), ent = st.row_entropy.to_vector(),
                                csum = st.col_sum.to_vector(), rsum = st.row_sum.to_vector();
      // The first two real tokens (after a CLS token, when there is one).
      const size_t lead = cfg.pooling == "cls" && valid.size() > 1 ? 1 : 0;
      const int64_t first_tok = valid[lead], second_tok = lead + 1 < valid.size() ? valid[lead + 1] : -1;
      for (int64_t h = 0; h < H; ++h) {
        HeadInspection& r = out[l * (size_t)H + (size_t)h];
        double rm = 0, first = 0, second = 0, en = 0, dev = 0, rdev = 0, mx = 0;
        for (int64_t i : valid) {
          rm += rmax[(size_t)(h * n + i)];
          mx = std::max(mx, rmax[(size_t)(h * n + i)]);
          first += av[(size_t)((h * n + i) * n + first_tok)];
          if (second_tok >= 0) second += av[(size_t)((h * n + i) * n + second_tok)];
          en += ent[(size_t)(h * n + i)];
          dev = std::max(dev, std::abs(csum[(size_t)(h * n + i)] - 1.0));
          rdev = std::max(rdev, std::abs(rsum[(size_t)(h * n + i)] - 1.0));
        }
        r.n += nv / (double)k;
        r.row_max += rm / nv / (double)k;
        r.max_weight = std::max(r.max_weight, mx);
        r.bound += bound[(size_t)h] / (double)k;
        if (bound[(size_t)h] > 0) r.bound_used = std::max(r.bound_used, mx / bound[(size_t)h]);
        r.first_token += first / (double)k;  // mean over rows of A[i, first] times n
        r.second_token += second / (double)k;
        r.entropy += (nv > 1 ? en / nv / std::log(nv) : 1.0) / (double)k;
        r.col_dev = std::max(r.col_dev, dev);
        r.row_dev = std::max(r.row_dev, rdev);
      }
      x = layer.forward(x, mask);
    }
  }
  return out;
}

}  // namespace lotgrad::models
