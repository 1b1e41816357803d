// The processes of one data-parallel run: MPI's COMM_WORLD when lotgrad was started by mpirun
// (OpenMPI or MPICH), a world of one process otherwise. MPI is optional at build time
// (LOTGRAD_MPI, CMakeLists.txt): a build without it runs a world of one and refuses to start
// under mpirun with a message that says how to get MPI.
//
// Only what data-parallel training needs: sums across ranks (blocking and non-blocking, in
// place), a check that a value is the same on every rank, a barrier, and abort. Every rank
// must call the collective operations in the same order (MPI's rule).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lotgrad::dist {

// True when this lotgrad was built with MPI.
bool built_with_mpi();
// The launcher's world size in this process's environment (OMPI_COMM_WORLD_SIZE, PMI_SIZE),
// 1 when not started by mpirun.
int launched_size();

// A non-blocking reduction in flight (an MPI_Request).
struct Request {
  void* handle = nullptr;  // MPI_Request, boxed so that this header does not include mpi.h
  bool active = false;
};

class Comm {
 public:
  // The world: initialises MPI (thread level FUNNELED: only the main thread calls MPI) on
  // first use when launched by mpirun; throws std::runtime_error under mpirun when built
  // without MPI. MPI is finalised at exit.
  static Comm& world();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool distributed() const { return size_ > 1; }
  // "rank 1 of 4" (for messages).
  std::string where() const;

  // In place: data[i] = the sum over ranks of data[i]. A world of one returns at once.
  void allreduce_sum(double* data, int64_t n);
  void allreduce_sum(float* data, int64_t n);
  // Starts an in-place sum; test() lets MPI progress it (true when done), wait() finishes it.
  Request iallreduce_sum(float* data, int64_t n);
  Request iallreduce_sum(double* data, int64_t n);
  bool test(Request& r);
  void wait(Request& r);
  // The ranks whose flag is true (every rank calls it; every rank gets the list).
  std::vector<int> ranks_where(bool flag);
  // True when v is the same on every rank.
  bool same_everywhere(uint64_t v);
  void barrier();
  // Ends every rank of the run (MPI_Abort) after printing message to stderr.
  [[noreturn]] void abort(const std::string& message, int code = 1);

  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

 private:
  Comm();
  int rank_ = 0, size_ = 1;
  bool initialised_ = false;  // this object called MPI_Init_thread
};

}  // namespace lotgrad::dist
