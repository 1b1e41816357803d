#include "mqar.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "../core/io.h"
#include "detail.h"

namespace lotgrad::data {

namespace {
[[noreturn]] void bad(const std::string& option, const std::string& value, const std::string& need) {
  throw std::invalid_argument("mqar: " + option + " = " + value + ": " + need);
}

int64_t context_len(const MqarOptions& o) { return 2 * o.num_kv_pairs * o.passes; }

// n distinct integers from {lo, ..., lo + pool - 1}, uniform and in random order: a partial
// Fisher-Yates shuffle over a virtual array (only the swapped cells are stored).
std::vector<token_t> sample_distinct(detail::Rng& rng, int64_t lo, int64_t pool, int64_t n) {
  std::unordered_map<int64_t, int64_t> swapped;
  auto at = [&](int64_t i) { auto it = swapped.find(i); return it == swapped.end() ? i : it->second; };
  std::vector<token_t> out((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = i + (int64_t)rng.below((uint64_t)(pool - i));
    const int64_t vi = at(i), vj = at(j);
    swapped[j] = vi;
    out[(size_t)i] = (token_t)(lo + vj);
  }
  return out;
}

// n distinct 0-based slots drawn without replacement with probabilities p, in draw order.
// Race of exponential clocks (Efraimidis & Spirakis): slot s rings at E_s / p_s, E_s ~ Exp(1);
// the order of the rings is exactly successive weighted sampling without replacement.
std::vector<int64_t> sample_slots(detail::Rng& rng, const std::vector<double>& p, int64_t n) {
  std::vector<double> ring(p.size());
  for (size_t s = 0; s < p.size(); ++s) {
    const double u = ((double)(rng.bits() >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
    ring[s] = -std::log(u) / p[s];
  }
  std::vector<int64_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](int64_t a, int64_t b) { return ring[(size_t)a] < ring[(size_t)b]; });
  order.resize((size_t)n);
  return order;
}
}  // namespace

void validate(const MqarOptions& o) {
  const auto s = [](auto v) {
    std::ostringstream os;
    os << v;
    return os.str();
  };
  // Most specific rule first: each message names the option, its value and what it must be.
  if (o.num_kv_pairs < 1) bad("num_kv_pairs", s(o.num_kv_pairs), "must be >= 1");
  if (o.passes < 1) bad("passes", s(o.passes), "must be >= 1");
  if (o.vocab_size < 4)
    bad("vocab_size", s(o.vocab_size), "must be >= 4 (id 0 is the filler, keys are 1 .. V/2 - 1, values V/2 .. V - 1)");
  if (o.seq_len < 2 || o.seq_len % 2) bad("seq_len", s(o.seq_len), "must be even and >= 2 (key-value pairs)");
  if (o.num_kv_pairs > o.vocab_size / 2 - 1)
    bad("num_kv_pairs", s(o.num_kv_pairs),
        "needs that many distinct keys, but vocab_size = " + s(o.vocab_size) + " has only vocab_size/2 - 1 = " +
            s(o.vocab_size / 2 - 1));
  if (o.vocab_size <= o.seq_len)
    bad("vocab_size", s(o.vocab_size),
        "a vocab smaller than the sequence (or equal): must exceed seq_len = " + s(o.seq_len) + ", as zoology asserts");
  if (context_len(o) + 2 * o.num_kv_pairs > o.seq_len)
    bad("num_kv_pairs", s(o.num_kv_pairs),
        "needs 2·num_kv_pairs·(passes + 1) = " + s(context_len(o) + 2 * o.num_kv_pairs) + " <= seq_len = " +
            s(o.seq_len) + " (passes = " + s(o.passes) + "; 4·num_kv_pairs <= seq_len for one pass)");
  if (!(o.power_a > 0.0) || !std::isfinite(o.power_a)) bad("power_a", s(o.power_a), "must be finite and > 0");
}

std::vector<double> mqar_slot_probabilities(int64_t slots, double a) {
  std::vector<double> p((size_t)slots);
  double sum = 0.0;
  for (int64_t g = 1; g <= slots; ++g) sum += p[(size_t)g - 1] = a * std::pow((double)g, a - 1.0);
  for (double& v : p) v /= sum;
  return p;
}

MqarExample mqar_example(const MqarOptions& o, int64_t index) {
  validate(o);
  detail::Rng rng(detail::subseed(o.seed ^ 0x6d716172ULL, (uint64_t)index));
  const int64_t n = o.num_kv_pairs, ctx = context_len(o), half = o.vocab_size / 2;
  const std::vector<token_t> keys = sample_distinct(rng, 1, half - 1, n);
  const std::vector<token_t> vals = sample_distinct(rng, half, o.vocab_size - half, n);
  const std::vector<int64_t> slots = sample_slots(rng, mqar_slot_probabilities((o.seq_len - ctx) / 2, o.power_a), n);
  MqarExample e;
  e.inputs.assign((size_t)o.seq_len, 0);
  e.targets.assign((size_t)o.seq_len, kMqarIgnore);
  for (int64_t p = 0; p < o.passes; ++p)
    for (int64_t j = 0; j < n; ++j) {
      e.inputs[(size_t)(p * 2 * n + 2 * j)] = keys[(size_t)j];
      e.inputs[(size_t)(p * 2 * n + 2 * j + 1)] = vals[(size_t)j];
    }
  for (int64_t j = 0; j < n; ++j) {
    const size_t pos = (size_t)(ctx + 2 * slots[(size_t)j]);
    e.inputs[pos] = keys[(size_t)j];
    e.targets[pos] = vals[(size_t)j];
  }
  if (o.random_non_queries)
    for (token_t& t : e.inputs)
      if (t == 0) t = (token_t)rng.below((uint64_t)o.vocab_size);
  return e;
}

std::vector<MqarExample> generate_mqar(int64_t count, const MqarOptions& opt, int64_t first) {
  if (count < 0) bad("count", std::to_string(count), "must be >= 0");
  validate(opt);
  return detail::generate_range(count, first, [&](int64_t i) { return mqar_example(opt, i); });
}

MqarBatch mqar_batch(const std::vector<MqarExample>& ex, const std::vector<int64_t>& indices) {
  const int64_t b = (int64_t)indices.size();
  const int64_t len = b ? (int64_t)ex.at((size_t)indices[0]).inputs.size() : 0;
  std::vector<int64_t> in, tg;
  in.reserve((size_t)(b * len));
  tg.reserve((size_t)(b * len));
  for (int64_t i : indices) {
    const MqarExample& e = ex.at((size_t)i);
    if ((int64_t)e.inputs.size() != len || e.targets.size() != e.inputs.size())
      bad("example " + std::to_string(i) + " length", std::to_string(e.inputs.size()),
          "a batch needs one length, " + std::to_string(len));
    in.insert(in.end(), e.inputs.begin(), e.inputs.end());
    tg.insert(tg.end(), e.targets.begin(), e.targets.end());
  }
  return {Tensor::from_vector(in, {b, len}), Tensor::from_vector(tg, {b, len})};
}

// ---- Dataset, splits, files ------------------------------------------------------------------

Dataset mqar_dataset(const MqarOptions& opt, int64_t count, int64_t first, const std::string& name) {
  std::vector<MqarExample> ex = generate_mqar(count, opt, first);  // validates opt and count
  Dataset d;
  d.name = name;
  d.vocab_size = d.num_classes = opt.vocab_size;
  d.examples.resize(ex.size());
  for (size_t i = 0; i < ex.size(); ++i) {
    d.examples[i].tokens = std::move(ex[i].inputs);
    d.examples[i].targets = std::move(ex[i].targets);
  }
  return d;
}

uint64_t mqar_split_seed(uint64_t seed, int split) {
  if (split < 0 || split > 2) bad("split", std::to_string(split), "must be 0 (train), 1 (val) or 2 (test)");
  return split == 0 ? seed : detail::subseed(seed ^ 0x73706c6974ULL, (uint64_t)split);
}

MqarSplits generate_mqar_splits(const MqarOptions& opt, int64_t train, int64_t val, int64_t test) {
  const int64_t sizes[3] = {train, val, test};
  const char* names[3] = {"train", "val", "test"};
  for (int k = 0; k < 3; ++k)
    if (sizes[k] < 0) bad(std::string(names[k]) + " size", std::to_string(sizes[k]), "must be >= 0");
  MqarSplits s;
  s.options = opt;
  Dataset* parts[3] = {&s.train, &s.val, &s.test};
  for (int k = 0; k < 3; ++k) {
    MqarOptions o = opt;
    o.seed = mqar_split_seed(opt.seed, k);
    *parts[k] = mqar_dataset(o, sizes[k], 0, std::string("mqar/") + names[k]);
  }
  return s;
}

namespace {
const char* const kSplitFiles[3] = {"mqar_train.txt", "mqar_val.txt", "mqar_test.txt"};
constexpr const char* kMagic = "lotgrad-mqar v1";

[[noreturn]] void bad_file(const std::string& path, int64_t line, const std::string& what) {
  throw std::invalid_argument(path + ":" + std::to_string(line) + ": " + what);
}

void append_int(std::string& out, int64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

std::string shortest(double v) {  // the shortest text that reads back to exactly v
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::string header(const MqarOptions& o, size_t count) {
  return std::string(kMagic) + " examples=" + std::to_string(count) + " vocab_size=" + std::to_string(o.vocab_size) +
         " seq_len=" + std::to_string(o.seq_len) + " num_kv_pairs=" + std::to_string(o.num_kv_pairs) +
         " power_a=" + shortest(o.power_a) + " passes=" + std::to_string(o.passes) +
         " random_non_queries=" + (o.random_non_queries ? "1" : "0") + " seed=" + std::to_string(o.seed);
}

void write_split(const std::string& path, const MqarOptions& o, const Dataset& d) {
  std::string text = header(o, d.size()) + "\n";
  for (size_t i = 0; i < d.size(); ++i) {
    const Example& e = d.examples[i];
    if ((int64_t)e.tokens.size() != o.seq_len || e.targets.size() != e.tokens.size())
      bad(d.name + " example " + std::to_string(i) + " length",
          std::to_string(e.tokens.size()) + " tokens, " + std::to_string(e.targets.size()) + " targets",
          "write_mqar needs seq_len = " + std::to_string(o.seq_len) + " of each");
    for (size_t j = 0; j < e.tokens.size(); ++j) {
      if (j) text += ' ';
      append_int(text, e.tokens[j]);
    }
    text += '\t';
    for (size_t j = 0; j < e.targets.size(); ++j) {
      if (j) text += ' ';
      append_int(text, e.targets[j]);
    }
    text += '\n';
  }
  const std::string parent = std::filesystem::path(path).parent_path().string();
  if (!parent.empty()) detail::make_dirs(parent);
  lotgrad::write_file_atomic(path, text);  // core/io.h: temp file, fsync, rename
}

// Parses the header line into options and the declared example count.
MqarOptions parse_header(const std::string& path, const std::string& line, int64_t& count) {
  if (line.rfind(kMagic, 0) != 0)
    bad_file(path, 1, "not an MQAR file: the header must start with '" + std::string(kMagic) + "'");
  MqarOptions o;
  std::set<std::string> seen;
  for (const std::string& field : detail::split_ws(line.substr(std::string(kMagic).size()))) {
    const size_t eq = field.find('=');
    const std::string key = field.substr(0, eq), val = eq == std::string::npos ? "" : field.substr(eq + 1);
    int64_t i = 0;
    double x = 0;
    bool ok = detail::parse_int(val, i);
    if (key == "examples") count = i;
    else if (key == "vocab_size") o.vocab_size = i;
    else if (key == "seq_len") o.seq_len = i;
    else if (key == "num_kv_pairs") o.num_kv_pairs = i;
    else if (key == "passes") o.passes = i;
    else if (key == "random_non_queries") {
      ok = ok && (i == 0 || i == 1);
      o.random_non_queries = i == 1;
    } else if (key == "power_a") {
      ok = detail::parse_double(val, x);
      o.power_a = x;
    } else if (key == "seed") {
      const auto r = std::from_chars(val.data(), val.data() + val.size(), o.seed);
      ok = !val.empty() && r.ec == std::errc() && r.ptr == val.data() + val.size();
    } else bad_file(path, 1, "unknown header field '" + field + "'");
    if (!ok) bad_file(path, 1, "header field '" + field + "' has a bad value");
    seen.insert(key);
  }
  for (const char* key : {"examples", "vocab_size", "seq_len", "num_kv_pairs", "power_a", "passes",
                          "random_non_queries", "seed"})
    if (!seen.count(key)) bad_file(path, 1, std::string("header lacks the field ") + key);
  if (count < 0) bad_file(path, 1, "header: examples = " + std::to_string(count) + " must be >= 0");
  try {
    validate(o);
  } catch (const std::invalid_argument& e) {
    bad_file(path, 1, std::string("header: ") + e.what());
  }
  return o;
}

// Parses L space-separated integers of `text` into out; "" or the reason it failed.
std::string parse_ids(std::string_view text, int64_t L, std::vector<token_t>& out) {
  std::string_view bad;
  const int64_t at = detail::parse_spaced(text, out, bad, [](token_t) { return true; });
  if (at >= 0) {
    std::string why = "'";  // appended, not "'" + string: GCC 12 gives a false -Wrestrict there
    why.append(bad);
    return why + "' at position " + std::to_string(at) + " is not an integer";
  }
  if ((int64_t)out.size() != L) return "has " + std::to_string(out.size()) + " ids, expected seq_len = " + std::to_string(L);
  return "";
}

// One split file: its options (from the header) and examples, every line checked.
Dataset read_split(const std::string& path, MqarOptions& o) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw std::invalid_argument(path + ": not found (write it with write_mqar)");
  std::string text;
  try {
    text = detail::read_file(path);
  } catch (const IOError& e) {
    throw std::invalid_argument(e.what());
  }
  const std::vector<std::string> lines = detail::split_lines(text);
  if (lines.empty()) bad_file(path, 1, "empty file, expected the header '" + std::string(kMagic) + " ...'");
  int64_t count = 0;
  o = parse_header(path, lines[0], count);
  const int64_t L = o.seq_len, V = o.vocab_size;
  Dataset d;
  d.name = path;
  d.vocab_size = d.num_classes = V;
  d.examples.resize(lines.size() - 1);
  for (size_t li = 1; li < lines.size(); ++li) {
    const int64_t lineno = (int64_t)li + 1;
    const std::string& line = lines[li];
    const size_t tab = line.find('\t');
    if (tab == std::string::npos || line.find('\t', tab + 1) != std::string::npos)
      bad_file(path, lineno, "expected the input ids, one tab, then the targets");
    Example& e = d.examples[li - 1];
    const std::string_view view(line);
    if (std::string why = parse_ids(view.substr(0, tab), L, e.tokens); !why.empty())
      bad_file(path, lineno, "inputs: " + why);
    if (std::string why = parse_ids(view.substr(tab + 1), L, e.targets); !why.empty())
      bad_file(path, lineno, "targets: " + why);
    for (int64_t j = 0; j < L; ++j) {
      const token_t in = e.tokens[(size_t)j], tg = e.targets[(size_t)j];
      if (in < 0 || in >= V)
        bad_file(path, lineno, "input id " + std::to_string(in) + " at position " + std::to_string(j) +
                                   " is outside [0, vocab_size = " + std::to_string(V) + ")");
      if (tg != kMqarIgnore && (tg < 0 || tg >= V))
        bad_file(path, lineno, "target " + std::to_string(tg) + " at position " + std::to_string(j) +
                                   " is neither -100 nor an id in [0, vocab_size = " + std::to_string(V) + ")");
    }
  }
  if ((int64_t)d.size() != count)
    bad_file(path, 1, "the header says examples = " + std::to_string(count) + " but the file has " +
                          std::to_string(d.size()) + " example lines");
  return d;
}

bool same_stream(const MqarOptions& a, const MqarOptions& b) {
  return a.vocab_size == b.vocab_size && a.seq_len == b.seq_len && a.num_kv_pairs == b.num_kv_pairs &&
         a.power_a == b.power_a && a.passes == b.passes && a.random_non_queries == b.random_non_queries &&
         a.seed == b.seed;
}
}  // namespace

void write_mqar(const std::string& dir, const MqarSplits& s) {
  const std::filesystem::path p(dir);
  const Dataset* parts[3] = {&s.train, &s.val, &s.test};
  for (int k = 0; k < 3; ++k) write_split((p / kSplitFiles[k]).string(), s.options, *parts[k]);
}

MqarSplits read_mqar(const std::string& dir) {
  const std::filesystem::path p(dir);
  MqarSplits s;
  Dataset* parts[3] = {&s.train, &s.val, &s.test};
  for (int k = 0; k < 3; ++k) {
    const std::string path = (p / kSplitFiles[k]).string();
    MqarOptions o;
    *parts[k] = read_split(path, o);
    if (k == 0) s.options = o;
    else if (!same_stream(o, s.options))
      bad_file(path, 1, "header options differ from those of " + (p / kSplitFiles[0]).string());
  }
  return s;
}

}  // namespace lotgrad::data
