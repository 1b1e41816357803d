#include "comm.h"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#if LOTGRAD_HAVE_MPI
#include <mpi.h>
#endif

namespace lotgrad::dist {

namespace {
int env_int(const char* name, int otherwise) {
  const char* v = std::getenv(name);
  if (!v || !*v) return otherwise;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return *end == '\0' && n >= 0 ? (int)n : otherwise;
}
}  // namespace

bool built_with_mpi() { return LOTGRAD_HAVE_MPI; }

int launched_size() { return env_int("OMPI_COMM_WORLD_SIZE", env_int("PMI_SIZE", 1)); }

std::string Comm::where() const { return "rank " + std::to_string(rank_) + " of " + std::to_string(size_); }

#if LOTGRAD_HAVE_MPI
namespace {
void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw std::runtime_error(std::string("MPI: ") + what + " failed: " + text);
}
MPI_Request* req(Request& r) { return static_cast<MPI_Request*>(r.handle); }
}  // namespace

Comm::Comm() {
  if (launched_size() <= 1) return;  // not under mpirun (or mpirun -n 1): no MPI needed
  int ready = 0;
  MPI_Initialized(&ready);
  if (!ready) {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    initialised_ = true;
  }
  // Errors come back as codes (check() turns them into exceptions) instead of aborting.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

Comm::~Comm() {
  int done = 0;
  if (initialised_ && (MPI_Finalized(&done), !done)) MPI_Finalize();
}

void Comm::allreduce_sum(double* data, int64_t n) {
  if (size_ > 1) check(MPI_Allreduce(MPI_IN_PLACE, data, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
}
void Comm::allreduce_sum(float* data, int64_t n) {
  if (size_ > 1) check(MPI_Allreduce(MPI_IN_PLACE, data, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
}

namespace {
Request start(void* data, int64_t n, MPI_Datatype type, int size) {
  Request r;
  if (size <= 1) return r;
  auto* h = new MPI_Request;
  check(MPI_Iallreduce(MPI_IN_PLACE, data, (int)n, type, MPI_SUM, MPI_COMM_WORLD, h), "MPI_Iallreduce");
  r.handle = h;
  r.active = true;
  return r;
}
}  // namespace
Request Comm::iallreduce_sum(float* data, int64_t n) { return start(data, n, MPI_FLOAT, size_); }
Request Comm::iallreduce_sum(double* data, int64_t n) { return start(data, n, MPI_DOUBLE, size_); }

bool Comm::test(Request& r) {
  if (!r.active) return true;
  int done = 0;
  check(MPI_Test(req(r), &done, MPI_STATUS_IGNORE), "MPI_Test");
  if (done) {
    delete req(r);
    r = {};
  }
  return done != 0;
}

void Comm::wait(Request& r) {
  if (!r.active) return;
  check(MPI_Wait(req(r), MPI_STATUS_IGNORE), "MPI_Wait");
  delete req(r);
  r = {};
}

std::vector<int> Comm::ranks_where(bool flag) {
  std::vector<int> all((size_t)size_, 0);
  const int mine = flag ? 1 : 0;
  if (size_ > 1) check(MPI_Allgather(&mine, 1, MPI_INT, all.data(), 1, MPI_INT, MPI_COMM_WORLD), "MPI_Allgather");
  else all[0] = mine;
  std::vector<int> out;
  for (int i = 0; i < size_; ++i)
    if (all[(size_t)i]) out.push_back(i);
  return out;
}

bool Comm::same_everywhere(uint64_t v) {
  if (size_ <= 1) return true;
  uint64_t lo = v, hi = v;
  check(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
  check(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  return lo == hi;
}

void Comm::barrier() {
  if (size_ > 1) check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

void Comm::abort(const std::string& message, int code) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

#else  // built without MPI: a world of one

Comm::Comm() {
  if (launched_size() > 1)
    throw std::runtime_error("this lotgrad was built without MPI, but mpirun started it as one of " +
                             std::to_string(launched_size()) +
                             " processes: install OpenMPI (apt-get install libopenmpi-dev openmpi-bin, or bash "
                             "scripts/setup.sh), configure the build again (cmake reports \"MPI: found\") and rebuild");
}
Comm::~Comm() = default;
void Comm::allreduce_sum(double*, int64_t) {}
void Comm::allreduce_sum(float*, int64_t) {}
Request Comm::iallreduce_sum(float*, int64_t) { return {}; }
Request Comm::iallreduce_sum(double*, int64_t) { return {}; }
bool Comm::test(Request&) { return true; }
void Comm::wait(Request&) {}
std::vector<int> Comm::ranks_where(bool flag) { return flag ? std::vector<int>{0} : std::vector<int>{}; }
bool Comm::same_everywhere(uint64_t) { return true; }
void Comm::barrier() {}
void Comm::abort(const std::string& message, int code) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::_Exit(code);
}
#endif

Comm& Comm::world() {
  static Comm w;
  return w;
}

}  // namespace lotgrad::dist
