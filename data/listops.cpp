#include "listops.h"

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <unordered_set>

#include "detail.h"

namespace lotgrad::data {

namespace {
const char* const kOps[4] = {"[MIN", "[MAX", "[MED", "[SM"};

bool is_digit_id(token_t t) { return t >= kListOpsDigit0 && t < kListOpsDigit0 + 10; }
bool is_op_id(token_t t) { return t >= kListOpsMin && t <= kListOpsSum; }

// One tree in token form; false when it reached `limit` tokens (abandoned, to be rejected).
struct TreeGen {
  const ListOpsOptions& opt;
  detail::Rng& rng;
  std::vector<token_t>& out;
  size_t limit;
  bool gen(int depth) {
    if (out.size() >= limit) return false;
    // Official order: a uniform draw only below max_depth; x > VALUE_P (or max depth) -> leaf.
    const double x = depth < opt.max_depth ? rng.uniform() : 1.0;
    if (x > opt.value_p) {
      out.push_back(kListOpsDigit0 + (token_t)rng.below(10));
      return true;
    }
    const int64_t k = rng.range(2, opt.max_args);
    out.push_back(kListOpsMin + (token_t)rng.below(4));
    for (int64_t i = 0; i < k; ++i)
      if (!gen(depth + 1)) return false;
    out.push_back(kListOpsClose);
    return out.size() < limit;
  }
};

int64_t apply_op(token_t op, std::vector<int64_t>& a) {
  if (a.empty()) throw std::invalid_argument("listops: operator " + listops_symbol(op) + " without arguments");
  switch (op) {
    case kListOpsMin: return *std::min_element(a.begin(), a.end());
    case kListOpsMax: return *std::max_element(a.begin(), a.end());
    case kListOpsMed: {
      std::sort(a.begin(), a.end());
      const size_t m = a.size() / 2;
      // int(np.median): the mean of the middle pair, truncated toward 0 (values are >= 0).
      return a.size() % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
    }
    default: {
      int64_t s = 0;
      for (int64_t v : a) s += v;
      return s % 10;
    }
  }
}
}  // namespace

std::string listops_symbol(token_t id) {
  if (id == kListOpsPad) return "<pad>";
  if (is_digit_id(id)) return std::to_string(id - kListOpsDigit0);
  if (is_op_id(id)) return kOps[id - kListOpsMin];
  if (id == kListOpsClose) return "X";
  throw std::out_of_range("listops: no symbol for id " + std::to_string(id));
}

token_t listops_id(const std::string& s) {
  if (s.size() == 1 && s[0] >= '0' && s[0] <= '9') return kListOpsDigit0 + (s[0] - '0');
  if (s == "X" || s == "]") return kListOpsClose;
  for (int i = 0; i < 4; ++i)
    if (s == kOps[i]) return kListOpsMin + i;
  return -1;
}

std::vector<Example> generate_listops(int64_t count, const ListOpsOptions& opt, ListOpsStats* stats) {
  if (count < 0) throw std::invalid_argument("generate_listops: negative count");
  if (opt.max_depth < 1 || opt.max_args < 2 || !(opt.value_p >= 0.0 && opt.value_p <= 1.0))
    throw std::invalid_argument("generate_listops: need max_depth >= 1, max_args >= 2, value_p in [0, 1]");
  if (opt.max_length - opt.min_length < 2 || opt.max_length < 2)
    throw std::invalid_argument("generate_listops: no length satisfies " + std::to_string(opt.min_length) +
                                " < length < " + std::to_string(opt.max_length));
  if (count > 0 && opt.value_p == 0.0 && opt.min_length >= 1)
    throw std::invalid_argument("generate_listops: value_p = 0 only makes single digits");
  ListOpsStats st;
  std::vector<Example> out;
  out.reserve((size_t)count);
  std::unordered_set<std::string> seen;
  detail::Rng rng(detail::subseed(opt.seed, 0x11575));
  std::vector<token_t> toks;
  // Give up on options that essentially never produce a tree (instead of looping forever).
  const int64_t max_attempts = std::max<int64_t>(1000000, count * 100000);
  while ((int64_t)out.size() < count) {
    if (st.attempts >= max_attempts)
      throw std::invalid_argument("generate_listops: only " + std::to_string(out.size()) + " of " +
                                  std::to_string(count) + " trees after " + std::to_string(st.attempts) +
                                  " attempts; the length limits are too tight");
    ++st.attempts;
    toks.clear();
    TreeGen g{opt, rng, toks, (size_t)opt.max_length};
    if (!g.gen(1)) continue;
    const int64_t len = (int64_t)toks.size();
    if (!(len > opt.min_length && len < opt.max_length)) continue;
    ++st.accepted;
    std::string key(toks.begin(), toks.end());  // ids < 16 fit in a char
    if (!seen.insert(std::move(key)).second) { ++st.duplicates; continue; }
    Example e;
    e.label = listops_evaluate(toks);
    e.tokens = toks;
    out.push_back(std::move(e));
  }
  if (stats) *stats = st;
  return out;
}

ListOpsSplits generate_listops_splits(const ListOpsOptions& opt, ListOpsStats* stats) {
  if (opt.train < 0 || opt.val < 0 || opt.test < 0) throw std::invalid_argument("generate_listops: negative split size");
  std::vector<Example> all = generate_listops(opt.train + opt.val + opt.test, opt, stats);
  ListOpsSplits s;
  Dataset* parts[3] = {&s.train, &s.val, &s.test};
  const char* names[3] = {"listops/train", "listops/val", "listops/test"};
  const int64_t sizes[3] = {opt.train, opt.val, opt.test};
  size_t pos = 0;
  for (int p = 0; p < 3; ++p) {
    parts[p]->name = names[p];
    parts[p]->vocab_size = kListOpsVocab;
    parts[p]->num_classes = kListOpsClasses;
    for (int64_t i = 0; i < sizes[p]; ++i) parts[p]->examples.push_back(std::move(all[pos++]));
  }
  return s;
}

int64_t listops_evaluate(const std::vector<token_t>& tokens) {
  struct Frame { token_t op; std::vector<int64_t> args; };
  std::vector<Frame> stack;
  bool have_root = false;
  int64_t root = 0;
  auto emit = [&](int64_t v) {
    if (stack.empty()) {
      if (have_root) throw std::invalid_argument("listops: more than one top-level expression");
      have_root = true;
      root = v;
    } else {
      stack.back().args.push_back(v);
    }
  };
  for (token_t t : tokens) {
    if (t == kListOpsPad) continue;
    if (is_digit_id(t)) emit(t - kListOpsDigit0);
    else if (is_op_id(t)) {
      if (have_root && stack.empty()) throw std::invalid_argument("listops: more than one top-level expression");
      stack.push_back({t, {}});
    } else if (t == kListOpsClose) {
      if (stack.empty()) throw std::invalid_argument("listops: unmatched closing bracket");
      Frame f = std::move(stack.back());
      stack.pop_back();
      emit(apply_op(f.op, f.args));
    } else {
      throw std::invalid_argument("listops: unknown token id " + std::to_string(t));
    }
  }
  if (!stack.empty()) throw std::invalid_argument("listops: unclosed operator " + listops_symbol(stack.back().op));
  if (!have_root) throw std::invalid_argument("listops: empty expression");
  return root;
}

std::string listops_source(const std::vector<token_t>& tokens) {
  // Child count of each operator, to open its k + 1 parentheses up front.
  std::vector<int64_t> nchild(tokens.size(), 0);
  {
    std::vector<size_t> open;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const token_t t = tokens[i];
      if (is_op_id(t)) {
        if (!open.empty()) ++nchild[open.back()];
        open.push_back(i);
      } else if (t == kListOpsClose) {
        if (open.empty()) throw std::invalid_argument("listops: unmatched closing bracket");
        open.pop_back();
      } else if (is_digit_id(t)) {
        if (!open.empty()) ++nchild[open.back()];
      } else {
        throw std::invalid_argument("listops: unknown token id " + std::to_string(t));
      }
    }
    if (!open.empty()) throw std::invalid_argument("listops: unclosed operator");
  }
  // ((..((op c1) c2) .. ck) ]) printed as "( " * (k + 1), op, then ") " after each child.
  static const char* const kDigits[10] = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  std::string s;
  s.reserve(tokens.size() * 4);
  int depth = 0;
  auto piece = [&](const char* p) {
    if (!s.empty()) s += ' ';
    s += p;
  };
  for (size_t i = 0; i < tokens.size(); ++i) {
    const token_t t = tokens[i];
    if (is_op_id(t)) {
      for (int64_t j = 0; j <= nchild[i]; ++j) piece("(");
      piece(kOps[t - kListOpsMin]);
      ++depth;
    } else if (is_digit_id(t)) {
      piece(kDigits[t - kListOpsDigit0]);
      if (depth > 0) piece(")");
    } else {  // close
      piece("]");
      piece(")");
      if (--depth > 0) piece(")");
    }
  }
  return s;
}

std::vector<token_t> listops_tokenize(const std::string& source) {
  // Same result as LRA's replace(']', 'X'), drop '(' and ')', split(): a token is a maximal
  // run of non-space characters with the parentheses removed. One pass, no per-token strings.
  std::vector<token_t> out;
  std::string w;
  auto flush = [&] {
    if (w.empty()) return;
    token_t id = -1;
    if (w.size() == 1) {
      if (w[0] >= '0' && w[0] <= '9') id = kListOpsDigit0 + (w[0] - '0');
      else if (w[0] == 'X') id = kListOpsClose;
    } else {
      id = listops_id(w);
    }
    if (id < 0) throw std::invalid_argument("unknown ListOps symbol '" + w + "'");
    out.push_back(id);
    w.clear();
  };
  for (char c : source) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') flush();
    else if (c != '(' && c != ')') w += c == ']' ? 'X' : c;
  }
  flush();
  return out;
}

void write_listops_tsv(const std::string& path, const Dataset& d) {
  std::string text = "Source\tTarget\n";
  for (const Example& e : d.examples) {
    text += listops_source(e.tokens);
    text += '\t';
    text += std::to_string(e.label);
    text += '\n';
  }
  detail::write_file(path, text);
}

void write_listops(const std::string& dir, const ListOpsSplits& s) {
  detail::make_dirs(dir);
  const std::filesystem::path p(dir);
  write_listops_tsv((p / "basic_train.tsv").string(), s.train);
  write_listops_tsv((p / "basic_val.tsv").string(), s.val);
  write_listops_tsv((p / "basic_test.tsv").string(), s.test);
}

Dataset read_listops_tsv(const std::string& path, const ListOpsReadOptions& opt) {
  const std::vector<std::string> lines = detail::split_lines(detail::read_file(path));
  Dataset d;
  d.name = path;
  d.vocab_size = kListOpsVocab;
  d.num_classes = kListOpsClasses;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    const int64_t lineno = (int64_t)i + 1;
    if (i == 0 && line.rfind("Source", 0) == 0) continue;  // header
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const auto cols = detail::split(line, '\t');
    if (cols.size() != 2)
      detail::fail_line(path, lineno, "expected 2 tab-separated columns (Source, Target), got " +
                                          std::to_string(cols.size()));
    Example e;
    if (!detail::parse_int(cols[1], e.label) || e.label < 0 || e.label >= kListOpsClasses)
      detail::fail_line(path, lineno, "label '" + cols[1] + "' is not an integer in 0..9");
    try {
      e.tokens = listops_tokenize(cols[0]);
      if (e.tokens.empty()) throw std::invalid_argument("empty expression");
      if (opt.verify_labels) {
        const int64_t v = listops_evaluate(e.tokens);
        if (v != e.label)
          throw std::invalid_argument("label " + std::to_string(e.label) + " but the expression evaluates to " +
                                      std::to_string(v));
      }
    } catch (const std::invalid_argument& ex) {
      detail::fail_line(path, lineno, ex.what());
    }
    if (opt.max_length > 0 && (int64_t)e.tokens.size() > opt.max_length) e.tokens.resize((size_t)opt.max_length);
    d.examples.push_back(std::move(e));
  }
  return d;
}

ListOpsSplits read_listops(const std::string& dir, const ListOpsReadOptions& opt) {
  const std::filesystem::path p(dir);
  ListOpsSplits s;
  s.train = read_listops_tsv((p / "basic_train.tsv").string(), opt);
  s.val = read_listops_tsv((p / "basic_val.tsv").string(), opt);
  s.test = read_listops_tsv((p / "basic_test.tsv").string(), opt);
  return s;
}

}  // namespace lotgrad::data
