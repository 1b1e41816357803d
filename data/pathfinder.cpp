#include "pathfinder.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string_view>

#include "../core/parallel.h"
#include "detail.h"

namespace lotgrad::data {

namespace fs = std::filesystem;

namespace {
constexpr int kSize = 32;              // output pixels
constexpr int kOver = 2;               // oversampling of the drawing canvas
constexpr double kDashLen = 2.0;       // px
constexpr double kDashHalfWidth = 0.5; // px
constexpr double kGap = 1.0;           // px between consecutive dashes of a path
constexpr double kClearance = 2.0;     // min centre-line distance to other dashes (1 px visible gap)
constexpr double kMargin = 1.5;        // endpoints stay in [kMargin, 32 - kMargin]
constexpr double kMarkerR = 1.5;
constexpr double kSeedDistance = 7.0;
constexpr double kPi = 3.14159265358979323846;
constexpr int kTurnTries = 4;
constexpr int kMaxRestarts = 5000;

struct Vec { double x, y; };
Vec operator+(Vec a, Vec b) { return {a.x + b.x, a.y + b.y}; }
Vec operator-(Vec a, Vec b) { return {a.x - b.x, a.y - b.y}; }
Vec operator*(double s, Vec a) { return {s * a.x, s * a.y}; }
double dot(Vec a, Vec b) { return a.x * b.x + a.y * b.y; }
double cross(Vec a, Vec b) { return a.x * b.y - a.y * b.x; }
Vec dir(double th) { return {std::cos(th), std::sin(th)}; }

double point_seg(Vec p, Vec a, Vec b) {
  const Vec ab = b - a, ap = p - a;
  const double L2 = dot(ab, ab);
  double t = L2 > 0 ? dot(ap, ab) / L2 : 0.0;
  t = std::clamp(t, 0.0, 1.0);
  const Vec d = p - (a + t * ab);
  return std::sqrt(dot(d, d));
}
double seg_seg(Vec a, Vec b, Vec c, Vec d) {
  const double d1 = cross(b - a, c - a), d2 = cross(b - a, d - a), d3 = cross(d - c, a - c), d4 = cross(d - c, b - c);
  if (((d1 > 0 && d2 < 0) || (d1 < 0 && d2 > 0)) && ((d3 > 0 && d4 < 0) || (d3 < 0 && d4 > 0))) return 0.0;
  return std::min({point_seg(a, c, d), point_seg(b, c, d), point_seg(c, a, b), point_seg(d, a, b)});
}

struct Dash { Vec a, b; float value; };

struct Scene {
  detail::Rng& rng;
  double continuity;
  std::vector<Dash> dashes;
  std::vector<Vec> markers;  // obstacles for distractors

  bool inside(Vec p) const { return p.x >= kMargin && p.x <= kSize - kMargin && p.y >= kMargin && p.y <= kSize - kMargin; }
  // Clear of every dash except `skip` (the previous dash of the same path) and of markers.
  bool clear(Vec a, Vec b, int64_t skip) const {
    const Vec mid = 0.5 * (a + b);
    constexpr double kFar = kDashLen + kClearance;  // midpoints farther apart than this are clear
    for (size_t i = 0; i < dashes.size(); ++i) {
      if ((int64_t)i == skip) continue;
      const Vec dm = mid - 0.5 * (dashes[i].a + dashes[i].b);
      if (dot(dm, dm) > kFar * kFar) continue;
      if (seg_seg(a, b, dashes[i].a, dashes[i].b) < kClearance) return false;
    }
    for (Vec m : markers)
      if (point_seg(m, a, b) < kMarkerR + kClearance - kDashHalfWidth) return false;
    return true;
  }
  double turn() {
    const double lim = (kPi / 2) / continuity;
    for (;;) {  // rejection: density ∝ cos^2(|d| * c) on |d| < lim (accepts half the time)
      const double d = (2 * rng.uniform() - 1) * lim, c = std::cos(std::abs(d) * continuity);
      if (rng.uniform() < c * c) return d;
    }
  }
  // Grows a path of n dashes from `start`; on failure removes its dashes and returns false.
  bool path(Vec start, double heading, int n, Vec* end) {
    const size_t first = dashes.size();
    double th = heading;
    Vec prev_end = start;
    for (int i = 0; i < n; ++i) {
      bool ok = false;
      for (int t = 0; t < (i == 0 ? 1 : kTurnTries) && !ok; ++t) {
        const double nth = i == 0 ? heading : th + turn();
        const Vec a = i == 0 ? start : prev_end + kGap * dir(nth);
        const Vec b = a + kDashLen * dir(nth);
        if (inside(a) && inside(b) && clear(a, b, i == 0 ? -1 : (int64_t)dashes.size() - 1)) {
          dashes.push_back({a, b, (float)(0.75 + 0.25 * rng.uniform())});
          th = nth;
          prev_end = b;
          ok = true;
        }
      }
      if (!ok) {
        dashes.resize(first);
        return false;
      }
    }
    if (end) *end = prev_end;
    return true;
  }
};

void render(const std::vector<Dash>& dashes, const std::vector<Vec>& markers, std::vector<uint8_t>& out) {
  constexpr int F = kSize * kOver;
  std::vector<float> canvas((size_t)F * F, 0.0f);
  auto stamp = [&](double x0, double y0, double x1, double y1, auto&& value_at) {
    const int fx0 = std::max(0, (int)std::floor(x0 * kOver)), fx1 = std::min(F - 1, (int)std::ceil(x1 * kOver));
    const int fy0 = std::max(0, (int)std::floor(y0 * kOver)), fy1 = std::min(F - 1, (int)std::ceil(y1 * kOver));
    for (int fy = fy0; fy <= fy1; ++fy)
      for (int fx = fx0; fx <= fx1; ++fx) {
        const Vec p{(fx + 0.5) / kOver, (fy + 0.5) / kOver};
        const float v = value_at(p);
        float& c = canvas[(size_t)fy * F + fx];
        c = std::max(c, v);  // max-compositing
      }
  };
  for (const Dash& d : dashes) {
    const double r = kDashHalfWidth + 1;
    stamp(std::min(d.a.x, d.b.x) - r, std::min(d.a.y, d.b.y) - r, std::max(d.a.x, d.b.x) + r,
          std::max(d.a.y, d.b.y) + r, [&](Vec p) { return point_seg(p, d.a, d.b) <= kDashHalfWidth ? d.value : 0.0f; });
  }
  for (Vec m : markers) {
    const double r = kMarkerR + 1;
    stamp(m.x - r, m.y - r, m.x + r, m.y + r, [&](Vec p) {
      const Vec d = p - m;
      return std::sqrt(dot(d, d)) <= kMarkerR ? 1.0f : 0.0f;
    });
  }
  out.assign((size_t)kSize * kSize, 0);
  for (int y = 0; y < kSize; ++y)
    for (int x = 0; x < kSize; ++x) {
      float s = 0;
      for (int dy = 0; dy < kOver; ++dy)
        for (int dx = 0; dx < kOver; ++dx) s += canvas[(size_t)(y * kOver + dy) * F + x * kOver + dx];
      out[(size_t)y * kSize + x] = (uint8_t)std::lround(255.0f * s / (kOver * kOver));
    }
}

uint64_t stream_seed(const PathfinderOptions& opt) {
  return detail::subseed(opt.seed, 0x9a7f1000ULL + (uint64_t)opt.contour_length);
}
int distractor_len(const PathfinderOptions& opt) { return std::max(1, opt.contour_length / 3); }
int distractor_paths(const PathfinderOptions& opt) { return opt.distractor_dashes / distractor_len(opt); }

void check(const PathfinderOptions& opt) {
  if (opt.contour_length < 2 || opt.contour_length > 40)
    throw std::invalid_argument("pathfinder: contour_length must be in 2..40, got " + std::to_string(opt.contour_length));
  if (opt.count < 0 || opt.distractor_dashes < 0 || opt.images_per_dir < 1 || !(opt.continuity > 0))
    throw std::invalid_argument("pathfinder: need count >= 0, distractor_dashes >= 0, images_per_dir >= 1, continuity > 0");
}
}  // namespace

std::string pathfinder_dir_name(int contour_length) {
  return contour_length == 6 ? "curv_baseline" : "curv_contour_length_" + std::to_string(contour_length);
}

PathfinderImage generate_pathfinder_image(const PathfinderOptions& opt, int64_t index) {
  check(opt);
  const uint64_t base = stream_seed(opt);
  PathfinderImage img;
  // Exactly balanced classes: a fair coin per pair of images, opposite labels within a pair.
  img.label = (int64_t)((detail::Rng(detail::subseed(base, (uint64_t)(index / 2))).bits() & 1) ^ (uint64_t)(index & 1));
  detail::Rng rng(detail::subseed(base ^ 0x5eed, (uint64_t)index));
  const int K = opt.contour_length;
  for (int attempt = 0; attempt < kMaxRestarts; ++attempt) {
    Scene s{rng, opt.continuity, {}, {}};
    const Vec c{kSize / 2.0 + 4 * rng.uniform() - 2, kSize / 2.0 + 4 * rng.uniform() - 2};
    const double phi = 2 * kPi * rng.uniform();
    const Vec sa = c + (kSeedDistance / 2) * dir(phi), sb = c - (kSeedDistance / 2) * dir(phi);
    Vec ea{}, eb{};
    if (!s.path(sa, 2 * kPi * rng.uniform(), K, &ea)) continue;
    if (!s.path(sb, 2 * kPi * rng.uniform(), K, &eb)) continue;
    // Which target gets the origin marker is a coin flip, so A and B are symmetric.
    Vec origin = sa, same_end = ea, other_end = eb;
    if (rng.bits() & 1) { origin = sb; same_end = eb; other_end = ea; }
    const Vec second = img.label ? same_end : other_end;
    const Vec dm = second - origin;
    if (std::sqrt(dot(dm, dm)) < 2 * kMarkerR + 1) continue;  // markers must not touch
    s.markers = {origin, second};
    // Distractors: anywhere free; a path that cannot be placed after 20 tries is dropped.
    for (int p = 0, n = distractor_paths(opt); p < n; ++p)
      for (int t = 0; t < 20; ++t) {
        const Vec st{kMargin + (kSize - 2 * kMargin) * rng.uniform(), kMargin + (kSize - 2 * kMargin) * rng.uniform()};
        if (s.path(st, 2 * kPi * rng.uniform(), distractor_len(opt), nullptr)) break;
      }
    render(s.dashes, s.markers, img.pixels);
    return img;
  }
  throw std::runtime_error("pathfinder: could not place the target paths for image " + std::to_string(index) +
                           " (contour_length " + std::to_string(K) + " too long for 32 x 32?)");
}

// Generates opt.count images in parallel; each is independent of the thread count.
static std::vector<PathfinderImage> generate_all(const PathfinderOptions& opt) {
  check(opt);
  std::vector<PathfinderImage> imgs((size_t)opt.count);
  std::exception_ptr err;
  std::mutex mu;
  parallel_for(0, opt.count, 16, [&](int64_t b, int64_t e) {
    try {
      for (int64_t i = b; i < e; ++i) imgs[(size_t)i] = generate_pathfinder_image(opt, i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  });
  if (err) std::rethrow_exception(err);
  return imgs;
}

Dataset generate_pathfinder(const PathfinderOptions& opt, const ImageOptions& img) {
  Dataset d;
  d.name = "pathfinder/" + pathfinder_dir_name(opt.contour_length);
  d.vocab_size = image_vocab(img);
  d.num_classes = 2;
  for (PathfinderImage& im : generate_all(opt)) {
    Example e;
    e.label = im.label;
    e.tokens.assign(im.pixels.begin(), im.pixels.end());
    for (token_t& t : e.tokens) t += img.pixel_shift;
    d.examples.push_back(std::move(e));
  }
  return d;
}

std::string write_pathfinder(const std::string& root, const PathfinderOptions& opt) {
  const std::vector<PathfinderImage> imgs = generate_all(opt);
  const fs::path dir = fs::path(root) / pathfinder_dir_name(opt.contour_length);
  detail::make_dirs((dir / "metadata").string());
  std::map<int64_t, std::string> meta;
  for (int64_t i = 0; i < opt.count; ++i) {
    const int64_t k = i / opt.images_per_dir;
    const std::string sub = "imgs/" + std::to_string(k), file = "sample_" + std::to_string(i) + ".png";
    write_png_gray((dir / sub / file).string(), kSize, kSize, imgs[(size_t)i].pixels);
    meta[k] += sub + " " + file + " " + std::to_string(i) + " " + std::to_string(imgs[(size_t)i].label) + " " +
               std::to_string(opt.contour_length) + " " + std::to_string(distractor_len(opt)) + " " +
               std::to_string(distractor_paths(opt)) + "\n";
  }
  for (const auto& [k, text] : meta) detail::write_file((dir / "metadata" / (std::to_string(k) + ".npy")).string(), text);
  return dir.string();
}

namespace {
// True if path lies in root or below it; both absolute and normalised.
bool within(const fs::path& path, const fs::path& root) {
  auto p = path.begin();
  for (const auto& r : root) {
    if (p == path.end() || *p != r) return false;
    ++p;
  }
  return true;
}

// The first n fields of line (separated by spaces, tabs or '\r'), fewer if it has fewer.
size_t first_fields(std::string_view line, std::string_view* out, size_t n) {
  size_t k = 0, i = 0;
  auto space = [&](size_t j) { return line[j] == ' ' || line[j] == '\t' || line[j] == '\r'; };
  while (k < n) {
    while (i < line.size() && space(i)) ++i;
    if (i == line.size()) break;
    const size_t b = i;
    while (i < line.size() && !space(i)) ++i;
    out[k++] = line.substr(b, i - b);
  }
  return k;
}

// The image a metadata line names (fields subdir and file), confined to the dataset root:
// both relative, no '..' component and no NUL byte, and (symbolic links followed) resolving
// inside the root, whose canonical form is root_real. Fails naming the metadata line.
fs::path confined_image(const fs::path& base, const fs::path& root_real, const std::string& sub,
                        const std::string& file, const std::string& mpath, int64_t lineno) {
  for (const std::string& f : {sub, file}) {
    if (f.find('\0') != std::string::npos)
      detail::fail_line(mpath, lineno, "image path field contains a NUL byte");
    const fs::path q(f);
    if (q.has_root_path())
      detail::fail_line(mpath, lineno, "image path '" + f + "' is absolute; metadata paths must be relative to the "
                                       "dataset root " + base.string());
    for (const auto& part : q)
      if (part == "..")
        detail::fail_line(mpath, lineno, "image path '" + f + "' has a '..' component; metadata paths must stay "
                                         "inside the dataset root " + base.string());
  }
  const fs::path png = base / sub / file;
  std::error_code ec;
  const fs::path real = fs::weakly_canonical(png, ec);
  if (ec) detail::fail_line(mpath, lineno, png.string() + ": cannot resolve: " + ec.message());
  if (!within(real, root_real))
    detail::fail_line(mpath, lineno, "image " + png.string() + " resolves to " + real.string() +
                                         ", outside the dataset root " + root_real.string() + " (a symbolic link?)");
  return png;
}
}  // namespace

Dataset read_pathfinder(const std::string& dir, const PathfinderReadOptions& opt) {
  const fs::path base(dir), mdir = base / "metadata";
  std::error_code ec;
  if (!fs::is_directory(mdir, ec))
    detail::fail(mdir.string(), "no metadata folder (point at a difficulty folder such as curv_contour_length_14)");
  // Numeric stems in numeric order (0.npy, 1.npy, ..., 10.npy), others after them by name.
  std::vector<std::pair<std::pair<int64_t, std::string>, fs::path>> files;
  for (const auto& ent : fs::directory_iterator(mdir)) {
    if (!ent.is_regular_file() || ent.path().extension() != ".npy") continue;
    int64_t k = 0;
    const std::string stem = ent.path().stem().string();
    const bool numeric = detail::parse_int(stem, k);
    files.push_back({{numeric ? k : INT64_MAX, stem}, ent.path()});
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) detail::fail(mdir.string(), "no .npy metadata files");
  const fs::path root_real = fs::canonical(base, ec);
  if (ec) detail::fail(base.string(), "cannot resolve the dataset root: " + ec.message());
  Dataset d;
  d.name = "pathfinder/" + base.filename().string();
  d.vocab_size = image_vocab(opt.image);
  d.num_classes = 2;
  int size = opt.image_size;
  for (const auto& f : files) {
    const std::string mpath = f.second.string();
    const fs::path mreal = fs::weakly_canonical(f.second, ec);
    if (ec || !within(mreal, root_real))
      detail::fail(mpath, "resolves to " + mreal.string() + ", outside the dataset root " + root_real.string() +
                              " (a symbolic link?)");
    // Lines and fields are scanned in place: a vector of strings per line would cost about 32
    // bytes per newline or space of the file.
    const std::string text = detail::read_file(mpath);
    int64_t lineno = 0;
    for (size_t b = 0; b < text.size();) {
      const size_t eol = std::min(text.find('\n', b), text.size());
      const std::string_view line(text.data() + b, eol - b);
      b = eol + 1;
      ++lineno;
      std::string_view fields[4];
      const size_t nf = first_fields(line, fields, 4);
      if (nf == 0) continue;
      if (nf < 4)
        detail::fail_line(mpath, lineno, "expected at least 4 space-separated fields (subdir file index label), got " +
                                             std::to_string(nf));
      Example e;
      if (!detail::parse_int(std::string(fields[3].substr(0, 64)), e.label) || fields[3].size() > 64 ||
          (e.label != 0 && e.label != 1))
        detail::fail_line(mpath, lineno, "label '" + std::string(fields[3].substr(0, 64)) + "' is not 0 or 1");
      const fs::path png = confined_image(base, root_real, std::string(fields[0]), std::string(fields[1]), mpath, lineno);
      if (opt.skip_empty_files && fs::is_regular_file(png, ec) && fs::file_size(png, ec) == 0) continue;
      int w = 0, h = 0;
      std::vector<uint8_t> px;
      try {
        px = read_png_gray(png.string(), &w, &h);
      } catch (const IOError& ex) {
        detail::fail_line(mpath, lineno, ex.what());
      }
      if (size == 0) size = w;
      if (w != size || h != size)
        detail::fail_line(mpath, lineno, png.string() + " is " + std::to_string(w) + "x" + std::to_string(h) +
                                             ", expected " + std::to_string(size) + "x" + std::to_string(size));
      e.tokens.assign(px.begin(), px.end());
      for (token_t& t : e.tokens) t += opt.image.pixel_shift;
      d.examples.push_back(std::move(e));
    }
  }
  return d;
}

}  // namespace lotgrad::data
