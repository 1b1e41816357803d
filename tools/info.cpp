// `lotgrad info` and `lotgrad probe`. info describes the build and every registered attention
// mechanism from its declaration (nn::attention_registry()): no mechanism is named here.
#include <cblas.h>

#include <cmath>
#include <cstdio>
#include <lotgrad/lotgrad.h>
#include <nlohmann/json.hpp>

#include "checks.h"
#include "commands.h"
#include "options.h"

namespace lotgrad::cli {

namespace {
using json = nlohmann::ordered_json;

const char* type_name(nn::KnobType t) {
  switch (t) {
    case nn::KnobType::integer: return "integer";
    case nn::KnobType::real: return "real";
    case nn::KnobType::flag: return "flag";
    default: return "choice";
  }
}

// A knob's value as JSON: a choice by its name, an integer or flag as an integer, else the number.
json knob_value(const nn::Knob* k, double v) {
  if (k && k->type == nn::KnobType::choice) return k->format(v);
  if (k && k->type != nn::KnobType::real) return (int64_t)v;
  return v;
}
json bound(const nn::Knob& k, double v) { return std::isinf(v) ? json(nullptr) : knob_value(&k, v); }

json knob_json(const nn::Knob& k) {
  json j = {{"name", k.name}, {"option", k.option()}, {"type", type_name(k.type)}, {"range", k.range()}};
  if (k.type == nn::KnobType::integer || k.type == nn::KnobType::real) {
    j["lo"] = bound(k, k.lo);
    j["hi"] = bound(k, k.hi);
  }
  if (k.type == nn::KnobType::choice) j["choices"] = k.choices;
  j["default"] = k.optional ? json(nullptr) : knob_value(&k, k.def);
  j["help"] = k.help;
  return j;
}

json mechanism_json(const nn::MechanismSpec& s) {
  json m = {{"name", s.name}, {"summary", s.summary}};
  m["capabilities"] = {{"causal", s.caps.causal},
                       {"why_not_causal", s.caps.why_not_causal},
                       {"doubly_stochastic", s.caps.doubly_stochastic},
                       {"linear_time", s.caps.linear_time},
                       {"block_input", s.caps.block_input}};
  m["knobs"] = json::array();
  for (const auto& k : s.knobs) m["knobs"].push_back(knob_json(k));
  m["presets"] = json::object();
  for (const auto& [task, values] : s.presets) {
    json p = json::object();
    for (const auto& [name, v] : values) p[name] = knob_value(s.knob(name), v);
    m["presets"][task] = p;
  }
  m["no_decay"] = s.no_decay;
  return m;
}

// Everything `lotgrad info` says, once: the text form prints this object.
json info_json() {
  json j = {{"version", LOTGRAD_VERSION}};
  j["threads"] = {{"lotgrad", get_num_threads()}, {"openmp_max", omp_get_max_threads()},
                  {"openblas", openblas_get_num_threads()}};
  j["openblas"] = openblas_get_config();
  j["mechanisms"] = json::array();
  for (const auto& s : nn::attention_registry()) j["mechanisms"].push_back(mechanism_json(s));
  j["tasks"] = json::array();
  for (const auto& t : models::task_specs())
    j["tasks"].push_back({{"name", t.name}, {"summary", t.summary}, {"metric", t.metric},
                          {"higher_is_better", t.higher_is_better}, {"causal_model", t.kind != models::TaskKind::classify}});
  return j;
}

// A JSON value as text: strings bare, null as "none", numbers as %g does.
std::string text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "none";
  if (!v.is_number_float()) return v.dump();
  char b[32];
  std::snprintf(b, sizeof b, "%.10g", v.get<double>());
  return b;
}
const char* yes(const json& v) { return v.get<bool>() ? "yes" : "no"; }

void print_mechanism(const json& m) {
  const json& c = m["capabilities"];
  std::printf("\n%s: %s\n", text(m["name"]).c_str(), text(m["summary"]).c_str());
  std::printf("  causal: %s%s\n", yes(c["causal"]),
              c["causal"].get<bool>() || text(c["why_not_causal"]).empty() ? "" : (" (" + text(c["why_not_causal"]) + ")").c_str());
  std::printf("  doubly stochastic: %s, linear time: %s, block input: %s\n", yes(c["doubly_stochastic"]),
              yes(c["linear_time"]), yes(c["block_input"]));
  std::printf("  knobs:%s\n", m["knobs"].empty() ? " none" : "");
  for (const auto& k : m["knobs"])
    std::printf("    %-18s %-7s %-22s default %-9s %s\n", text(k["option"]).c_str(), text(k["type"]).c_str(),
                text(k["range"]).c_str(), text(k["default"]).c_str(), text(k["help"]).c_str());
  std::printf("  presets:%s\n", m["presets"].empty() ? " none" : "");
  for (const auto& [task, p] : m["presets"].items()) {
    std::string line;
    for (const auto& [name, v] : p.items()) line += " " + name + "=" + text(v);
    std::printf("    %s:%s\n", task.c_str(), line.empty() ? " (the defaults)" : line.c_str());
  }
  std::string nd;
  for (const auto& n : m["no_decay"]) nd += (nd.empty() ? "" : ", ") + text(n);
  std::printf("  no weight decay: %s\n", nd.empty() ? "none" : nd.c_str());
}
}  // namespace

int cmd_info(int argc, char** argv) {
  CLI::App app("The version, thread and BLAS settings, the tasks, and every registered attention mechanism: its summary,\n"
               "capabilities, knobs (option, type and range, default), presets per task and parameters without\n"
               "weight decay. --json prints the same as one JSON object.",
               "lotgrad info");
  bool as_json = false;
  int64_t threads = 0;
  app.add_flag("--json", as_json, "print one JSON object instead of text");
  add_threads_applied(app, threads);
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  const json j = info_json();
  if (as_json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("lotgrad %s\n", text(j["version"]).c_str());
  std::printf("threads: %s (OpenMP max %s, OpenBLAS %s)\n", text(j["threads"]["lotgrad"]).c_str(),
              text(j["threads"]["openmp_max"]).c_str(), text(j["threads"]["openblas"]).c_str());
  std::printf("OpenBLAS: %s\n", text(j["openblas"]).c_str());
  std::printf("tasks (lotgrad train --task):\n");
  for (const auto& t : j["tasks"])
    std::printf("  %-15s %s; metric %s (%s is better)%s\n", text(t["name"]).c_str(), text(t["summary"]).c_str(),
                text(t["metric"]).c_str(), t["higher_is_better"].get<bool>() ? "higher" : "lower",
                t["causal_model"].get<bool>() ? "; a causal model" : "");
  std::printf("attention mechanisms:");
  for (const auto& m : j["mechanisms"]) std::printf(" %s", text(m["name"]).c_str());
  std::printf("\n");
  for (const auto& m : j["mechanisms"]) print_mechanism(m);
  return 0;
}

int cmd_probe(int argc, char** argv) {
  CLI::App app("Builds one multi-head attention layer with the chosen mechanism, feeds it a random (1, n, d_model)\n"
               "input (the last --pad positions padded), writes its (1, H, n, n) attention matrix to --out as .npy\n"
               "and prints per-head statistics: max weight, row/column sum ranges, mean row entropy, numerical rank.\n"
               "No --json.",
               "lotgrad probe");
  MechanismOptions mechanism(app, "softmax");
  int64_t n = 64, D = 64, H = 2, pad = 0, seed = 0, threads = 0;
  std::string out;
  add_number(app, "--n", n, 1, 16384, "tokens (the matrix is n x n)");
  add_setting(app, "d-model", D);
  add_setting(app, "heads", H);
  add_number(app, "--pad", pad, 0, 16384, "padded positions at the end (fewer than --n)");
  add_number(app, "--seed", seed, 0, kMaxSeed, "seed of the weights and the input");
  app.add_option("--out", out, "the .npy file to write")->default_str("attn_<attention>.npy");
  add_threads_applied(app, threads);
  nn::AttentionOptions opt;
  after_parse(app, [&] {
    if (pad >= n)
      throw std::invalid_argument("--pad " + std::to_string(pad) + " must be below --n " + std::to_string(n));
    check_heads(D, H);
    opt = mechanism.options(H);
  });
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (out.empty()) out = "attn_" + opt.name + ".npy";
  Generator g((uint64_t)seed);
  nn::MultiHeadAttention mha(D, opt, g);
  Tensor x = randn({1, n, D}, g);
  std::vector<bool> m(n, false);
  for (int64_t j = n - pad; j < n; ++j) m[j] = true;
  Tensor mask = pad ? Tensor::from_vector(m, {1, n}) : Tensor();
  Tensor A = nn::probe_attention(mha, x, mask);
  save_npy(out, A);
  nn::AttentionStats st = nn::attention_stats(A, mask);
  std::printf("%s: attention (1, %lld, %lld, %lld) written to %s\n", opt.name.c_str(), (long long)H, (long long)n,
              (long long)n, out.c_str());
  for (int64_t h = 0; h < H; ++h) {
    double rs_lo = 1e9, rs_hi = -1e9, cs_lo = 1e9, cs_hi = -1e9, ent = 0, mx = 0;
    for (int64_t i = 0; i < n - pad; ++i) {
      rs_lo = std::min(rs_lo, st.row_sum.at({0, h, i}));
      rs_hi = std::max(rs_hi, st.row_sum.at({0, h, i}));
      cs_lo = std::min(cs_lo, st.col_sum.at({0, h, i}));
      cs_hi = std::max(cs_hi, st.col_sum.at({0, h, i}));
      ent += st.row_entropy.at({0, h, i}) / (double)(n - pad);
      mx = std::max(mx, st.row_max.at({0, h, i}));
    }
    std::printf("head %lld: max weight %.4f (uniform 1/n = %.4f), row sums [%.4f, %.4f], column sums [%.4f, %.4f], "
                "mean row entropy %.3f (uniform %.3f), rank %lld\n",
                (long long)h, mx, 1.0 / (double)(n - pad), rs_lo, rs_hi, cs_lo, cs_hi, ent, std::log((double)(n - pad)),
                (long long)st.rank.at({0, h}));
  }
  return 0;
}

}  // namespace lotgrad::cli
