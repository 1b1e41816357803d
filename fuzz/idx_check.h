// The checks both IDX targets run. Input layout: u16 little-endian L, then L bytes of an
// images file, then the labels file (L is clamped to what is there). With gzip, each file is
// gzip-compressed by the target first, so the fuzzer mutates the IDX bytes behind the gzip
// layer; without, the bytes are written as they are (read_idx also decompresses a file that
// happens to be gzip, transparently).
#pragma once
#include <zlib.h>

#include <lotgrad/data/image.h>

#include "fuzz_common.h"

namespace lotgrad::fuzz {

// gzip of in; one deflate state for the whole run (deflateInit allocates ~270 KB, which
// under ASan made a fresh state per file cost more than the reader).
inline std::string gzip_bytes(std::string_view in) {
  static z_stream z{};  // zlib's state points back at this z_stream: initialised in place, never copied
  static const bool ready = deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK;
  if (!ready) die("deflateInit2");
  if (deflateReset(&z) != Z_OK) die("deflateReset");
  std::string out(deflateBound(&z, in.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = (uInt)in.size();
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = (uInt)out.size();
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) die("deflate");
  out.resize(z.total_out);
  return out;
}

inline void check_idx(const Scratch& scratch, const uint8_t* data, size_t size, bool gzip) {
  using namespace lotgrad::data;
  size_t len = size >= 2 ? (size_t)(data[0] | data[1] << 8) : 0;
  const size_t off = std::min<size_t>(size, 2);
  len = std::min(len, size - off);
  const std::string_view images(reinterpret_cast<const char*>(data) + off, len);
  const std::string_view labels(reinterpret_cast<const char*>(data) + off + len, size - off - len);
  const char* ext = gzip ? ".gz" : "";
  const std::string ip = scratch.write(std::string("images-idx3-ubyte") + ext, gzip ? gzip_bytes(images) : std::string(images));
  const std::string lp = scratch.write(std::string("labels-idx1-ubyte") + ext, gzip ? gzip_bytes(labels) : std::string(labels));

  try {
    const IdxArray a = read_idx(ip);
    uint64_t n = 1;
    for (int64_t d : a.dims) n *= (uint64_t)d;
    FUZZ_CHECK(!a.dims.empty() && a.dims.size() <= 8, std::to_string(a.dims.size()) + " dimensions");
    FUZZ_CHECK(n == a.data.size(), "dimensions multiply to " + std::to_string(n) + ", data has " + std::to_string(a.data.size()));
  } catch (const IOError& e) {
    expect_names(e, ip);
  }
  for (const int pad_to : {0, 32}) {
    Dataset d;
    try {
      d = read_idx_dataset(ip, lp, pad_to, ImageOptions{.pixel_shift = pad_to ? 1 : 0});
    } catch (const IOError& e) {
      expect_names(e, scratch.dir());
      continue;
    }
    for (const Example& e : d.examples) {
      FUZZ_CHECK(e.label >= 0 && e.label <= 9, "label " + std::to_string(e.label));
      FUZZ_CHECK(pad_to == 0 || e.tokens.size() == (size_t)pad_to * pad_to, std::to_string(e.tokens.size()) + " tokens");
      for (token_t t : e.tokens) FUZZ_CHECK(t >= 0 && t < d.vocab_size, "token " + std::to_string(t));
    }
  }
}

}  // namespace lotgrad::fuzz
