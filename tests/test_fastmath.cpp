// Accuracy of the vectorisable exp / log (ops/fastmath.h) over their whole ranges, against
// long double references, in units of the last place of the exact result; special values.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>

#include <lotgrad/ops/fastmath.h>

using namespace lotgrad::fastmath;

namespace {
// |y - ref| in ulps of ref (as the type of y).
template <class T>
double ulps(T y, long double ref) {
  const T r = (T)ref;
  const T up = std::nextafter(std::abs(r), std::numeric_limits<T>::infinity());
  const long double ulp = (long double)up - (long double)std::abs(r);
  return (double)(std::fabs((long double)y - ref) / ulp);
}
}  // namespace

TEST_CASE("fastmath: fexp float and double within 2 ulp over their ranges") {
  double wf = 0, wd = 0;
  for (int64_t k = 0; k <= 2000000; ++k) {
    const float x = -87.0f + (float)(175.37 * (double)k / 2000000.0);
    wf = std::max(wf, ulps(fexp(x), std::exp((long double)x)));
  }
  for (int64_t k = 0; k <= 2000000; ++k) {
    const double x = -708.0 + 1416.9999 * (double)k / 2000000.0 + 1e-8 * (double)(k % 7);
    wd = std::max(wd, ulps(fexp(x), std::exp((long double)x)));
  }
  MESSAGE("fexp max error: float " << wf << " ulp, double " << wd << " ulp");
  CHECK(wf < 2.0);
  CHECK(wd < 2.0);
  CHECK(fexp(0.0f) == 1.0f);
  CHECK(fexp(0.0) == 1.0);
  CHECK(fexp(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(fexp(-std::numeric_limits<double>::infinity()) == 0.0);
  CHECK(fexp(-100.0f) == 0.0f);
  CHECK(std::isinf(fexp(89.0f)));
  CHECK(std::isinf(fexp(710.0)));
}

TEST_CASE("fastmath: fexpm1 float and double within 2.5 ulp, also near 0 where exp(x) - 1 cancels") {
  double wf = 0, wd = 0;
  for (int64_t k = 0; k <= 2000000; ++k) {
    const float x = -87.0f + (float)(175.37 * (double)k / 2000000.0);
    wf = std::max(wf, ulps(fexpm1(x), std::expm1((long double)x)));
    const double xd = -708.0 + 1416.9999 * (double)k / 2000000.0 + 1e-8 * (double)(k % 7);
    wd = std::max(wd, ulps(fexpm1(xd), std::expm1((long double)xd)));
  }
  for (int64_t k = -100000; k <= 100000; ++k) {  // dense around 0 and across the switch at |x| = 1
    for (double c : {0.0, 1.0, -1.0}) {
      const double xd = c + (double)k * 1.1e-5;
      const float x = (float)xd;
      if (x != 0.0f) wf = std::max(wf, ulps(fexpm1(x), std::expm1((long double)x)));
      if (xd != 0.0) wd = std::max(wd, ulps(fexpm1(xd), std::expm1((long double)xd)));
    }
    const double tiny = (double)k * 1e-12;
    if (tiny != 0.0) wd = std::max(wd, ulps(fexpm1(tiny), std::expm1((long double)tiny)));
  }
  MESSAGE("fexpm1 max error: float " << wf << " ulp, double " << wd << " ulp");
  CHECK(wf < 2.5);
  CHECK(wd < 2.5);
  CHECK(fexpm1(0.0f) == 0.0f);
  CHECK(fexpm1(0.0) == 0.0);
  CHECK(fexpm1(-std::numeric_limits<float>::infinity()) == -1.0f);
  CHECK(fexpm1(-std::numeric_limits<double>::infinity()) == -1.0);
  CHECK(std::isnan(fexpm1(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(fexpm1(std::numeric_limits<double>::quiet_NaN())));
  CHECK(std::isinf(fexpm1(89.0f)));
}

TEST_CASE("fastmath: flog float and double within 2 ulp for all positive inputs, subnormals included") {
  double wf = 0, wd = 0;
  // Every 613th float bit pattern from the smallest subnormal to the largest finite.
  for (uint32_t u = 1; u < 0x7f800000u; u += 613) {
    const float x = std::bit_cast<float>(u);
    if (x == 1.0f) continue;
    wf = std::max(wf, ulps(flog(x), std::log((long double)x)));
  }
  // Doubles: a walk over exponents and mantissas, plus a dense sweep near 1.
  uint64_t state = 12345;
  for (int k = 0; k < 1000000; ++k) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    const uint64_t u = (state >> 1) % 0x7ff0000000000000ULL + 1;
    const double x = std::bit_cast<double>(u);
    wd = std::max(wd, ulps(flog(x), std::log((long double)x)));
  }
  for (int k = 1; k < 200000; ++k) {
    const double x = 1.0 + (double)(k - 100000) * 1e-9;
    if (x == 1.0) continue;
    wd = std::max(wd, ulps(flog(x), std::log((long double)x)));
    const float xf = 1.0f + (float)(k - 100000) * 1e-6f;
    if (xf != 1.0f) wf = std::max(wf, ulps(flog(xf), std::log((long double)xf)));
  }
  MESSAGE("flog max error: float " << wf << " ulp, double " << wd << " ulp");
  // flog_fast: relative error over normal doubles and densely over [1, 64] (row sums).
  double wr = 0;
  for (int k = 0; k < 400000; ++k) {
    const double x = k < 200000 ? std::bit_cast<double>((uint64_t)(0x0010000000000000ULL + (uint64_t)k * 0x3ff0000000000ULL / 2))
                                : 1.0 + 63.0 * (double)(k - 200000) / 200000.0;
    if (x == 1.0 || !(x > 0) || !std::isfinite(x)) continue;
    const long double ref = std::log((long double)x);
    wr = std::max(wr, (double)(std::fabs((long double)flog_fast(x) - ref) / std::fabs(ref)));
  }
  MESSAGE("flog_fast max relative error " << wr);
  CHECK(wr < 2e-12);
  CHECK(flog_fast(1.0) == 0.0);
  CHECK(wf < 2.0);
  CHECK(wd < 2.0);
  CHECK(flog(1.0f) == 0.0f);
  CHECK(flog(1.0) == 0.0);
  CHECK(flog(0.0f) == -std::numeric_limits<float>::infinity());
  CHECK(flog(0.0) == -std::numeric_limits<double>::infinity());
  CHECK(flog(std::numeric_limits<float>::infinity()) == std::numeric_limits<float>::infinity());
  CHECK(flog(std::numeric_limits<double>::infinity()) == std::numeric_limits<double>::infinity());
  CHECK(std::isnan(flog(-1.0f)));
  CHECK(std::isnan(flog(-1.0)));
  CHECK(std::isnan(flog(std::numeric_limits<double>::quiet_NaN())));
  CHECK(flog(std::numeric_limits<double>::denorm_min()) == doctest::Approx(-744.44007192138126));
  // Every sign-bit pattern: NaN for negatives, -inf for -0 (the bit arithmetic is unsigned: the
  // sanitizer build checks that no pattern overflows a signed integer).
  int64_t wrong = 0;
  for (uint32_t u = 0x80000001u; u < 0xffffffffu - 613; u += 613) {
    const float x = std::bit_cast<float>(u);
    wrong += !std::isnan(flog(x)) + (x < -1.0f && !std::isnan(flog1p(x)));
    const double xd = -std::ldexp((double)(u & 0xffffff) + 1, (int)(u % 2000) - 1074);
    wrong += !std::isnan(flog(xd)) + (xd - 1.0 < -1.0 && !std::isnan(flog1p(xd - 1.0)));
  }
  CHECK(wrong == 0);
  CHECK(flog(-0.0f) == -std::numeric_limits<float>::infinity());
  CHECK(flog(-0.0) == -std::numeric_limits<double>::infinity());
  // flog_fast is for positive normal inputs only; outside them it returns some number, and in
  // the sanitizer build these calls would report a signed overflow if its arithmetic had one.
  for (const double x : {-0.0, -1.0, -1e-300, 0.0, std::numeric_limits<double>::quiet_NaN()}) {
    volatile double y = flog_fast(x);
    (void)y;
  }
}

TEST_CASE("fastmath: fexp_full within 2 ulp over the whole range, subnormal results and overflow as std::exp") {
  double wf = 0, wd = 0;
  int64_t inf_mismatch = 0;
  auto check_f = [&](float x) {
    const long double ref = std::exp((long double)x);
    const float y = fexp_full(x);
    if (std::isinf((float)ref) || std::isinf(y)) inf_mismatch += std::isinf((float)ref) != std::isinf(y);
    else wf = std::max(wf, ulps(y, ref));
  };
  auto check_d = [&](double x) {
    const long double ref = std::exp((long double)x);
    const double y = fexp_full(x);
    if (std::isinf((double)ref) || std::isinf(y)) inf_mismatch += std::isinf((double)ref) != std::isinf(y);
    else wd = std::max(wd, ulps(y, ref));
  };
  for (int64_t k = 0; k <= 2000000; ++k) {
    check_f(-110.0f + (float)(200.0 * (double)k / 2000000.0));  // past both ends
    check_d(-750.0 + 1465.0 * (double)k / 2000000.0 + 1e-8 * (double)(k % 7));
  }
  for (int64_t k = 0; k <= 200000; ++k) {  // densely where results turn subnormal and overflow
    check_f(-104.0f + (float)(17.0 * (double)k / 200000.0));
    check_f(88.6f + (float)(0.2 * (double)k / 200000.0));
    check_d(-746.0 + 38.0 * (double)k / 200000.0);
    check_d(709.6 + 0.3 * (double)k / 200000.0);
  }
  MESSAGE("fexp_full max error: float " << wf << " ulp, double " << wd << " ulp (subnormal results in units of the smallest)");
  CHECK(wf < 2.0);
  CHECK(wd < 2.0);
  CHECK(inf_mismatch == 0);
  // Where fexp's clamps end, std::exp's results go on.
  CHECK(fexp_full(88.7f) > 1e38f);
  CHECK(fexp_full(-95.0f) > 0.0f);
  CHECK(fexp_full(-95.0f) == doctest::Approx((double)std::exp(-95.0f)).epsilon(1e-2));
  CHECK(fexp_full(-745.0) == std::numeric_limits<double>::denorm_min());
  CHECK(fexp_full(0.0f) == 1.0f);
  CHECK(fexp_full(0.0) == 1.0);
  CHECK(fexp_full(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(fexp_full(-std::numeric_limits<double>::infinity()) == 0.0);
  CHECK(std::isinf(fexp_full(std::numeric_limits<float>::infinity())));
  CHECK(std::isinf(fexp_full(710.0)));
  CHECK(std::isnan(fexp_full(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(fexp_full(-std::numeric_limits<double>::quiet_NaN())));
}

TEST_CASE("fastmath: ftanh within 2.5 ulp and flog1p within 3 ulp, near 0 included, and their special values") {
  double tf = 0, td = 0, lf = 0, ld = 0;
  for (int64_t k = -1000000; k <= 1000000; ++k) {
    const double xd = 25.0 * (double)k / 1000000.0 + 1e-9 * (double)(k % 5);
    const float x = (float)xd;
    if (x != 0.0f) tf = std::max(tf, ulps(ftanh(x), std::tanh((long double)x)));
    if (xd != 0.0) td = std::max(td, ulps(ftanh(xd), std::tanh((long double)xd)));
    const double sd = std::ldexp(1.0 + (double)(k & 1023) / 1024.0, (int)(k % 60) - 30);  // 2^-30 .. 2^30
    for (double v : {sd, -std::min(sd, 0.9999)}) {
      lf = std::max(lf, ulps(flog1p((float)v), std::log1p((long double)(float)v)));
      ld = std::max(ld, ulps(flog1p(v), std::log1p((long double)v)));
    }
  }
  for (int64_t k = 1; k <= 100000; ++k) {  // tiny arguments
    const double xd = (double)k * 1e-13;
    tf = std::max(tf, ulps(ftanh((float)-xd), std::tanh((long double)(float)-xd)));
    td = std::max(td, ulps(ftanh(xd), std::tanh((long double)xd)));
    lf = std::max(lf, ulps(flog1p((float)xd), std::log1p((long double)(float)xd)));
    ld = std::max(ld, ulps(flog1p(-xd), std::log1p((long double)-xd)));
  }
  MESSAGE("ftanh max error: float " << tf << " ulp, double " << td << " ulp; flog1p: float " << lf << ", double " << ld);
  CHECK(tf < 2.5);
  CHECK(td < 2.5);
  CHECK(lf < 3.0);
  CHECK(ld < 3.0);
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(ftanh(inf) == 1.0);
  CHECK(ftanh(-(float)inf) == -1.0f);
  CHECK(std::signbit(ftanh(-0.0)));
  CHECK(std::isnan(ftanh(std::numeric_limits<float>::quiet_NaN())));
  CHECK(flog1p(0.0) == 0.0);
  CHECK(flog1p(-1.0) == -inf);
  CHECK(flog1p(inf) == inf);
  CHECK(std::isnan(flog1p(-2.0f)));
  CHECK(std::isnan(flog1p(std::numeric_limits<double>::quiet_NaN())));
  CHECK(flog1p(1e-30f) == 1e-30f);
}
