// png_ink FILE.png: prints "WIDTH HEIGHT INK", INK = the pixels darker than 248 in grey (not
// white paper). report_browser_test.sh compares a screenshot of the report with a blank page.
#include <cstdio>
#include <exception>
#include <lotgrad/data/image.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: png_ink FILE.png\n");
    return 2;
  }
  try {
    int w = 0, h = 0;
    const std::vector<uint8_t> px = lotgrad::data::read_png_gray(argv[1], &w, &h);
    long ink = 0;
    for (uint8_t v : px) ink += v < 248;
    std::printf("%d %d %ld\n", w, h, ink);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "png_ink: %s\n", e.what());
    return 1;
  }
}
