#include "parallel.h"

#include "parse.h"

#include <cblas.h>

#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace lotgrad {

namespace {
int initial_threads() {
  for (const char* var : {"LOTGRAD_NUM_THREADS", "OMP_NUM_THREADS"}) {
    if (const char* v = std::getenv(var)) {
      int n = std::atoi(v);
      if (n >= 1) return n;
    }
  }
  return omp_get_num_procs();
}
int g_threads = [] {
  int n = initial_threads();
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
  return n;
}();
}  // namespace

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: need at least 1 thread, got " + std::to_string(n));
  g_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);  // the OpenMP build also follows omp_set_num_threads
}
int get_num_threads() { return g_threads; }

void check_thread_env() {
  const char* v = std::getenv("LOTGRAD_NUM_THREADS");
  if (!v) return;
  const std::string s = v;
  const std::optional<double> n = parse_number(s);
  const int cores = omp_get_num_procs();
  if (!n || *n < 1 || *n > cores || *n != std::floor(*n))
    throw std::invalid_argument("LOTGRAD_NUM_THREADS=\"" + s + "\": expected an integer in [1, " + std::to_string(cores) + "]");
}

}  // namespace lotgrad
