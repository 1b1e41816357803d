// Mechanism-level benchmarks:
//   lotgrad bench attention --attention NAME [--n 512,1024,...] [--batch 1] [--heads 2] [--d 32] [mechanism knobs]
//     forward and forward+backward time and peak memory of any registered mechanism.
//   lotgrad bench step --task listops --attention NAME --batch 32 --seq-len 2048 [knobs]
//     one training step (forward, backward, clipping, AdamW) of the LRA classifier.
// Mechanism knobs: nn::attention_knob_options() (--r --eps --half-steps --grad implicit|unrolled ...).
// Each measurement verifies its result before timing it (finite outputs and gradients; for
// doubly stochastic mechanisms, mean over tokens of the output equals the mean of v).
#include <cstring>
#include <fstream>
#include <lotgrad/models/classifier.h>
#include <map>

#include "harness.h"

int bench_attention_main(int argc, char** argv);
int bench_step_main(int argc, char** argv);

namespace lotgrad::bench {
namespace {

// Splits argv into our keyed options and the harness's.
struct Split {
  std::map<std::string, std::string> mine;
  std::vector<std::string> rest;
};
Split split_args(int argc, char** argv, const std::vector<std::string>& keys) {
  Split s;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    bool taken = false;
    for (const auto& k : keys) {
      if (a == "--" + k && i + 1 < argc) {
        s.mine[k] = argv[++i];
        taken = true;
      } else if (a.rfind("--" + k + "=", 0) == 0) {
        s.mine[k] = a.substr(k.size() + 3);
        taken = true;
      }
      if (taken) break;
    }
    if (!taken) s.rest.push_back(a);
  }
  return s;
}
Options harness_options(std::vector<std::string>& rest) {
  std::vector<char*> p;
  for (auto& r : rest) p.push_back(r.data());
  return parse_options((int)p.size(), p.data());
}
std::vector<int64_t> int_list(const std::string& s) {
  std::vector<int64_t> v;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t c = s.find(',', pos);
    v.push_back(std::stoll(s.substr(pos, c - pos)));
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  return v;
}
double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}
const std::vector<std::string>& kKnobKeys = nn::attention_knob_options();

nn::AttentionOptions mechanism_options(const std::map<std::string, std::string>& a, int64_t heads) {
  nn::AttentionOptions o;
  o.name = a.count("attention") ? a.at("attention") : "softmax";
  o.n_heads = heads;
  for (const auto& k : kKnobKeys)
    if (a.count(k)) nn::set_attention_knob(o.knobs, k, a.at(k));
  return o;
}
bool doubly_stochastic(const std::string& name) { return name == "lotformer"; }

std::string check_finite(const Tensor& t, const char* what) {
  for (double x : t.to_vector())
    if (!std::isfinite(x)) return std::string(what) + " has a non-finite value";
  return "";
}
}  // namespace
}  // namespace lotgrad::bench

int bench_attention_main(int argc, char** argv) {
  using namespace lotgrad;
  using namespace lotgrad::bench;
  try {
    std::vector<std::string> keys = {"attention", "n", "batch", "heads", "d"};
    keys.insert(keys.end(), kKnobKeys.begin(), kKnobKeys.end());
    Split s = split_args(argc, argv, keys);
    Options opt = harness_options(s.rest);
    Harness h("attention", opt);
    const int64_t B = s.mine.count("batch") ? std::stoll(s.mine["batch"]) : 1;
    const int64_t H = s.mine.count("heads") ? std::stoll(s.mine["heads"]) : 2;
    const int64_t d = s.mine.count("d") ? std::stoll(s.mine["d"]) : 32;
    std::vector<int64_t> ns = s.mine.count("n") ? int_list(s.mine["n"])
                                                : (opt.quick ? std::vector<int64_t>{256, 512}
                                                             : std::vector<int64_t>{512, 1024, 2048, 4096, 8192, 16384});
    nn::AttentionOptions ao = mechanism_options(s.mine, H);
    ao.d_head = d;
    Generator gen(0);
    auto mech = nn::make_attention(ao, gen);
    if (!opt.json) std::printf("# mechanism %s, B=%lld H=%lld d=%lld\n", mech->type_name().c_str(), (long long)B, (long long)H, (long long)d);
    for (int64_t n : ns) {
      Generator g(n);
      Tensor q = randn({B, H, n, d}, g), k = randn({B, H, n, d}, g), v = randn({B, H, n, d}, g);
      Tensor gy = randn({B, H, n, d}, g);
      Tensor out;
      auto verify = [&]() -> std::string {
        if (out.shape() != q.shape()) return "wrong output shape";
        std::string e = check_finite(out, "output");
        if (!e.empty()) return e;
        if (doubly_stochastic(ao.name)) {  // columns sum to 1: mean over tokens of A v = mean of v
          double worst = 0;
          Tensor mo = mean(out, {2}), mv = mean(v, {2});
          std::vector<double> a = mo.to_vector(), b = mv.to_vector();
          for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
          if (worst > 1e-3) return "mean over tokens differs from the mean of v by " + std::to_string(worst);
        }
        return "";
      };
      const std::string name = ao.name + " n=" + std::to_string(n);
      // forward (no graph)
      reset_storage_peak();
      int64_t base = storage_bytes_in_use();
      Measurement mf = h.measure(name, "fwd", [&] { NoGradGuard ng; out = mech->forward(q, k, v, Tensor()); }, verify, 0, 0);
      mf.extra.push_back({"peak_MB", (storage_bytes_peak() - base) / 1048576.0});
      mf.tags.push_back({"mechanism", mech->type_name()});
      h.emit(mf);
      // forward + backward
      Tensor qg = q.detach().requires_grad_(), kg = k.detach().requires_grad_(), vg = v.detach().requires_grad_();
      out = Tensor();
      reset_storage_peak();
      base = storage_bytes_in_use();
      Measurement mb = h.measure(name, "fwd+bwd", [&] {
        qg.zero_grad(); kg.zero_grad(); vg.zero_grad();
        mech->zero_grad();
        Tensor y = mech->forward(qg, kg, vg, Tensor());
        y.backward(gy);
        out = y.detach();
      }, [&]() -> std::string {
        std::string e = verify();
        if (e.empty()) e = check_finite(qg.grad(), "dq");
        if (e.empty()) e = check_finite(vg.grad(), "dv");
        return e;
      }, 0, 0);
      mb.extra.push_back({"peak_MB", (storage_bytes_peak() - base) / 1048576.0});
      mb.extra.push_back({"rss_MB", peak_rss_mb()});
      mb.tags.push_back({"mechanism", mech->type_name()});
      h.emit(mb);
    }
    return h.all_ok() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench attention: %s\n", e.what());
    return 2;
  }
}

int bench_step_main(int argc, char** argv) {
  using namespace lotgrad;
  using namespace lotgrad::bench;
  try {
    std::vector<std::string> keys = {"attention", "task", "batch", "seq-len", "depth", "d-model", "heads", "mlp"};
    keys.insert(keys.end(), kKnobKeys.begin(), kKnobKeys.end());
    Split s = split_args(argc, argv, keys);
    Options opt = harness_options(s.rest);
    if (!s.mine.count("runs") && opt.runs == 10) opt.runs = 5;
    Harness h("step", opt);
    const std::string task = s.mine.count("task") ? s.mine["task"] : "listops";
    if (task != "listops") throw std::invalid_argument("--task: only listops is built in for the step benchmark");
    const int64_t B = s.mine.count("batch") ? std::stoll(s.mine["batch"]) : 32;
    const int64_t n = s.mine.count("seq-len") ? std::stoll(s.mine["seq-len"]) : 2048;
    models::ClassifierConfig cfg;
    cfg.vocab = 32;
    cfg.max_len = n;
    cfg.num_classes = 10;
    cfg.encoder.depth = s.mine.count("depth") ? std::stoll(s.mine["depth"]) : 2;
    cfg.encoder.d_model = s.mine.count("d-model") ? std::stoll(s.mine["d-model"]) : 64;
    cfg.encoder.n_heads = s.mine.count("heads") ? std::stoll(s.mine["heads"]) : 2;
    cfg.encoder.mlp_hidden = s.mine.count("mlp") ? std::stoll(s.mine["mlp"]) : 128;
    cfg.encoder.attention = {mechanism_options(s.mine, cfg.encoder.n_heads)};
    Generator gen(0);
    models::SequenceClassifier model(cfg, gen);
    AdamW optim(decay_groups(model.named_parameters()), {.lr = 1e-4, .weight_decay = 0.0, .beta2 = 0.98});
    Tensor tokens = randint(1, 16, {B, n}, gen), labels = randint(0, 10, {B}, gen);
    double loss_v = 0;
    auto step = [&] {
      optim.zero_grad();
      Tensor loss = cross_entropy(model.forward(tokens), labels);
      loss.backward();
      clip_grad_norm_(model.parameters(), 5.0);
      optim.step();
      loss_v = loss.item();
    };
    reset_storage_peak();
    const int64_t base = storage_bytes_in_use();
    Measurement m = h.measure(task + " " + cfg.encoder.attention[0].name + " B=" + std::to_string(B) + " n=" + std::to_string(n),
                              "step", step, [&]() -> std::string {
                                if (!std::isfinite(loss_v)) return "loss is not finite";
                                for (auto& p : model.parameters()) {
                                  std::string e = check_finite(p, "a parameter");
                                  if (!e.empty()) return e;
                                }
                                return "";
                              }, 0, 0);
    m.extra.push_back({"tokens_per_s", m.median_s > 0 ? (double)(B * n) / m.median_s : 0});
    m.extra.push_back({"peak_MB", (storage_bytes_peak() - base) / 1048576.0});
    m.extra.push_back({"reserved_MB", storage_bytes_reserved_peak() / 1048576.0});
    m.extra.push_back({"rss_MB", peak_rss_mb()});
    m.tags.push_back({"model", std::to_string(model.num_parameters()) + " parameters"});
    h.emit(m);
    return h.all_ok() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench step: %s\n", e.what());
    return 2;
  }
}
