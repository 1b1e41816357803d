#include "text.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <stdexcept>

#include "detail.h"

namespace lotgrad::data {

namespace fs = std::filesystem;

std::vector<token_t> encode_bytes(std::string_view s, int64_t max_length) {
  const size_t n = max_length > 0 ? std::min(s.size(), (size_t)max_length) : s.size();
  std::vector<token_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = (token_t)(unsigned char)s[i] + 1;
  return out;
}

std::string decode_bytes(const std::vector<token_t>& ids) {
  std::string s;
  for (token_t t : ids)
    if (t >= 1 && t <= 256) s += (char)(unsigned char)(t - 1);
  return s;
}

static Dataset text_dataset(const std::string& name, const TextOptions& opt) {
  if (opt.num_classes < 1) throw std::invalid_argument("text: num_classes must be >= 1");
  Dataset d;
  d.name = name;
  d.vocab_size = kByteVocab;
  d.num_classes = opt.num_classes;
  return d;
}

Dataset read_text_folder(const std::string& dir, const TextOptions& opt) {
  Dataset d = text_dataset(dir, opt);
  std::error_code ec;
  // neg (0) before pos (1); files in name order within each.
  const std::pair<const char*, int64_t> parts[2] = {{"neg", 0}, {"pos", 1}};
  for (const auto& [sub, label] : parts) {
    const fs::path p = fs::path(dir) / sub;
    if (!fs::is_directory(p, ec)) detail::fail(p.string(), "no such folder (expected <dir>/pos and <dir>/neg)");
    if (label >= opt.num_classes) detail::fail(p.string(), "label 1 needs num_classes >= 2");
    std::vector<fs::path> files;
    for (const auto& ent : fs::directory_iterator(p))
      if (ent.is_regular_file() && ent.path().extension() == ".txt") files.push_back(ent.path());
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      Example e;
      e.label = label;
      e.tokens = encode_bytes(detail::read_file(f.string()), opt.max_length);
      d.examples.push_back(std::move(e));
    }
  }
  if (d.empty()) detail::fail(dir, "no .txt files under pos/ or neg/");
  return d;
}

namespace {
// RFC 4180 reader: fields of each record plus the line the record starts on.
struct CsvRecord {
  std::vector<std::string> fields;
  int64_t line;
};
std::vector<CsvRecord> parse_csv(const std::string& path, const std::string& text) {
  std::vector<CsvRecord> out;
  size_t i = 0;
  int64_t line = 1;
  const size_t n = text.size();
  while (i < n) {
    CsvRecord rec{{}, line};
    for (;;) {  // one field per iteration
      std::string field;
      if (i < n && text[i] == '"') {
        const int64_t qline = line;
        ++i;
        for (;;) {
          if (i >= n) detail::fail_line(path, qline, "unterminated quoted field");
          const char c = text[i++];
          if (c == '"') {
            if (i < n && text[i] == '"') { field += '"'; ++i; continue; }
            break;
          }
          if (c == '\n') ++line;
          field += c;
        }
        if (i < n && text[i] == '\r' && i + 1 < n && text[i + 1] == '\n') ++i;
        if (i < n && text[i] != ',' && text[i] != '\n')
          detail::fail_line(path, line, std::string("unexpected character '") + text[i] + "' after a closing quote");
      } else {
        while (i < n && text[i] != ',' && text[i] != '\n') field += text[i++];
        if (!field.empty() && field.back() == '\r' && (i >= n || text[i] == '\n')) field.pop_back();
      }
      rec.fields.push_back(std::move(field));
      if (i < n && text[i] == ',') { ++i; continue; }
      if (i < n && text[i] == '\n') { ++i; ++line; }
      break;
    }
    if (!(rec.fields.size() == 1 && rec.fields[0].empty())) out.push_back(std::move(rec));  // blank line
  }
  return out;
}

bool needs_quotes(const std::string& s) { return s.find_first_of(",\"\r\n") != std::string::npos; }
std::string csv_field(const std::string& s) {
  if (!needs_quotes(s)) return s;
  std::string q = "\"";
  for (char c : s) {
    if (c == '"') q += '"';
    q += c;
  }
  return q + "\"";
}
}  // namespace

Dataset read_text_csv(const std::string& path, const TextOptions& opt) {
  Dataset d = text_dataset(path, opt);
  const auto records = parse_csv(path, detail::read_file(path));
  for (size_t r = 0; r < records.size(); ++r) {
    const CsvRecord& rec = records[r];
    if (r == 0 && rec.fields.size() == 2 && rec.fields[0] == "Source" && rec.fields[1] == "Target") continue;
    if (rec.fields.size() != 2)
      detail::fail_line(path, rec.line, "expected 2 comma-separated columns (Source, Target), got " +
                                            std::to_string(rec.fields.size()));
    Example e;
    if (!detail::parse_int(rec.fields[1], e.label) || e.label < 0 || e.label >= opt.num_classes)
      detail::fail_line(path, rec.line, "label '" + rec.fields[1] + "' is not an integer in 0.." +
                                            std::to_string(opt.num_classes - 1));
    e.tokens = encode_bytes(rec.fields[0], opt.max_length);
    d.examples.push_back(std::move(e));
  }
  return d;
}

void write_text_csv(const std::string& path, const std::vector<std::pair<std::string, int64_t>>& rows) {
  std::string out = "Source,Target\n";
  for (const auto& [text, label] : rows) out += csv_field(text) + "," + std::to_string(label) + "\n";
  detail::write_file(path, out);
}

Dataset read_aan_tsv(const std::string& path, const RetrievalOptions& opt) {
  Dataset d;
  d.name = path;
  d.vocab_size = kByteVocab;
  d.num_classes = 2;
  d.paired = true;
  const std::string text = detail::read_file(path);
  // Lines by '\n' only: quoting is disabled, and a lone '\r' is part of the text.
  size_t b = 0;
  int64_t lineno = 0;
  while (b < text.size()) {
    size_t e = text.find('\n', b);
    if (e == std::string::npos) e = text.size();
    std::string line(text, b, e - b);
    b = e + 1;
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const auto cols = detail::split(line, '\t');
    if (cols.size() != 5)
      detail::fail_line(path, lineno, "expected 5 tab-separated columns (label, id1, id2, text1, text2), got " +
                                          std::to_string(cols.size()));
    double v = 0;
    if (!detail::parse_double(cols[0], v) || std::trunc(v) < 0 || std::trunc(v) > 1)
      detail::fail_line(path, lineno, "label '" + cols[0] + "' is not a number with integer part 0 or 1");
    Example ex;
    ex.label = (int64_t)v;  // float then int, as LRA
    ex.tokens = encode_bytes(cols[3], opt.max_length);
    ex.tokens2 = encode_bytes(cols[4], opt.max_length);
    d.examples.push_back(std::move(ex));
  }
  return d;
}

void write_aan_tsv(const std::string& path, const std::vector<RetrievalRow>& rows) {
  std::string out;
  for (size_t i = 0; i < rows.size(); ++i) {
    const RetrievalRow& r = rows[i];
    const std::pair<const char*, const std::string*> fields[4] = {
        {"id1", &r.id1}, {"id2", &r.id2}, {"text1", &r.text1}, {"text2", &r.text2}};
    for (const auto& [field, s] : fields)
      if (const size_t at = s->find_first_of("\t\n"); at != std::string::npos)
        throw std::invalid_argument("write_aan_tsv: " + path + ": row " + std::to_string(i) + " " + field + " has a " +
                                    ((*s)[at] == '\t' ? "tab" : "newline") + " at byte " + std::to_string(at) +
                                    " (fields must not contain tabs or newlines)");
    // The reader drops one '\r' at the end of a line (CRLF files), so a text2 ending in '\r'
    // would not read back as written.
    if (!r.text2.empty() && r.text2.back() == '\r')
      throw std::invalid_argument("write_aan_tsv: " + path + ": row " + std::to_string(i) +
                                  " text2 ends with a carriage return, which the reader takes for a CRLF line end");
    out += std::to_string(r.label) + "\t" + r.id1 + "\t" + r.id2 + "\t" + r.text1 + "\t" + r.text2 + "\n";
  }
  detail::write_file(path, out);
}

}  // namespace lotgrad::data
