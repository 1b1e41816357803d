// Byte-level text tasks: LRA Text (IMDb) and Retrieval (AAN).
//
// Token ids: byte b -> b + 1 (1..256), 0 = PAD; vocabulary 257. Bytes are taken as they are
// (UTF-8 text becomes its bytes). Sequences are cut to max_length tokens (LRA: 1000 in the
// released JAX config, 4000 in the 2-layer harnesses; 0 = no limit).
//
// Formats read:
//   - IMDb as a folder of reviews: <dir>/pos/*.txt (label 1) and <dir>/neg/*.txt (label 0),
//     files in name order (aclImdb/train, aclImdb/test). LRA uses the test set as dev.
//   - LRA custom text CSV (`{task}_{train,val,test}.tsv`, comma-separated despite the name):
//     header `Source,Target`, RFC 4180 quoting ("" inside quotes, newlines allowed in quotes),
//     Target an integer label.
//   - AAN retrieval TSV (`new_aan_pairs.{train,eval,test}.tsv`): no header, five tab-separated
//     columns label, id1, id2, text1, text2; no quoting; label parsed as a float then cast to
//     int (e.g. "1.0"), must be 0 or 1.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dataset.h"

namespace lotgrad::data {

constexpr int64_t kByteVocab = 257;

// Bytes of s as ids b + 1, cut to max_length (0 = all).
std::vector<token_t> encode_bytes(std::string_view s, int64_t max_length = 0);
// Inverse of encode_bytes (PAD ids are skipped).
std::string decode_bytes(const std::vector<token_t>& ids);

struct TextOptions {
  int64_t max_length = 4000;  // 0 = no limit
  int64_t num_classes = 2;    // labels must be in [0, num_classes)
};

// IMDb-style folder: pos/ and neg/ subfolders of .txt files.
Dataset read_text_folder(const std::string& dir, const TextOptions& opt = {});
// `Source,Target` CSV. Errors name the file and the line where the bad record starts.
Dataset read_text_csv(const std::string& path, const TextOptions& opt = {});
// Writes a `Source,Target` CSV (fields quoted when needed), e.g. to store a substitute corpus.
void write_text_csv(const std::string& path, const std::vector<std::pair<std::string, int64_t>>& rows);

struct RetrievalOptions {
  int64_t max_length = 4000;  // per document; 0 = no limit
};
// AAN five-column TSV; examples carry tokens (text1) and tokens2 (text2).
Dataset read_aan_tsv(const std::string& path, const RetrievalOptions& opt = {});
// Writes the AAN layout (label as an integer; ids and texts must not contain tabs or newlines,
// and text2 must not end with a carriage return; std::invalid_argument naming the row otherwise).
struct RetrievalRow {
  int64_t label;
  std::string id1, id2, text1, text2;
};
void write_aan_tsv(const std::string& path, const std::vector<RetrievalRow>& rows);

}  // namespace lotgrad::data
