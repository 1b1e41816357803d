// Pathfinder-32 (LRA): are the two dots connected by a dashed path? 2 classes, 1024 pixel tokens.
//
// Generator: lotgrad's simplified version of the original (docs/lra.md §3), written from the
// description. Units are output pixels; drawing happens on a 2x oversampled canvas that is
// box-downsampled to 32 x 32 and quantised to 0..255.
//   - A dash is a segment of length 2 px and width 1 px; consecutive dashes of a path are
//     separated by a 1 px gap. Each new dash turns by an angle drawn with density
//     cos^2(min(|d| * continuity, pi/2)). A dash whose footprint (1 px clearance) touches
//     anything other than the previous dash of its path, or leaves the 1 px margin, is
//     retried (4 turns); then the image is restarted.
//   - Two target paths of K dashes start 7 px apart near the centre (K = contour_length:
//     6 / 9 / 14 for curv_baseline / curv_contour_length_9 / curv_contour_length_14).
//   - Distractor paths of K/3 dashes, distractor_dashes / (K/3) of them, anywhere free.
//   - Markers: discs of radius 1.5 px at the start of target A and at the far end of A
//     (label 1, connected) or of B (label 0). Both classes draw the same paths; they differ
//     only in which endpoint gets the second marker. Dash intensity 0.75..1, markers 1.
//   - Labels are exactly balanced: images 2j and 2j+1 have opposite labels.
// Every image is a pure function of (seed, contour_length, index), so generation runs in
// parallel and any subset can be regenerated.
//
// Files (official layout): <root>/<difficulty dir>/imgs/<k>/sample_<i>.png and
// <root>/<difficulty dir>/metadata/<k>.npy: despite the name, text lines
//   imgs/<k> sample_<i>.png <i> <label> <contour_length> <distractor_length> <distractors>
// of which readers use field 0 (subdir), field 1 (file) and field 3 (label).
//
// Tokens: pixel values (see image.h for the token-0 quirk and pixel_shift).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dataset.h"
#include "image.h"

namespace lotgrad::data {

struct PathfinderOptions {
  int contour_length = 14;     // dashes per target path: 6, 9, 14 (any >= 2 works)
  int64_t count = 2000;        // images
  uint64_t seed = 0;
  int distractor_dashes = 20;  // in total, in paths of max(1, contour_length / 3) dashes
  double continuity = 1.0;     // larger = straighter paths
  int images_per_dir = 1000;   // images per imgs/<k> folder (and per metadata file)
};

// "curv_baseline" (6), "curv_contour_length_9", "curv_contour_length_14"; other lengths
// give "curv_contour_length_<K>".
std::string pathfinder_dir_name(int contour_length);

struct PathfinderImage {
  std::vector<uint8_t> pixels;  // 32 x 32, row-major
  int64_t label = 0;            // 1 = connected
};
// Image `index` of the stream defined by opt (seed, contour length, ...).
PathfinderImage generate_pathfinder_image(const PathfinderOptions& opt, int64_t index);
// opt.count images as a dataset (no files).
Dataset generate_pathfinder(const PathfinderOptions& opt, const ImageOptions& img = {});
// Writes opt.count images plus metadata under <root>/<pathfinder_dir_name(K)>/ and returns
// that folder.
std::string write_pathfinder(const std::string& root, const PathfinderOptions& opt);

struct PathfinderReadOptions {
  ImageOptions image;
  int image_size = 32;          // expected width = height; 0 = take the first image's size
  bool skip_empty_files = true; // skip 0-byte PNGs, as S4 does for the known empty one
};
// Reads a difficulty folder (the one holding imgs/ and metadata/): metadata files in numeric
// order, lines in order. Errors name the metadata file and line. Metadata is untrusted: image
// paths must be relative without a '..' component, and every image and metadata file must
// resolve (symbolic links followed) inside the folder, or the read fails naming the line.
Dataset read_pathfinder(const std::string& dir, const PathfinderReadOptions& opt = {});

}  // namespace lotgrad::data
