// The ranks of a distributed job (DESIGN §10): MPI when the process was started by a
// launcher (mpirun, srun) and the build has MPI (PHI3_MPI), else a world of one process
// that behaves exactly like a plain run. Only the calling thread uses MPI (the sweep's
// stream threads never do). Every collective here is a no-op with one rank.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "runtime/error.h"

namespace phi3 {

// Raised on every rank when some rank failed; rank 0 reports `what()` (naming the rank).
struct JobFailed : Error {
  JobFailed(const std::string& msg, int code) : Error(msg), exit_code(code) {}
  int exit_code;
};

class Comm {
 public:
  // The process's world, initialised on first use. Joins MPI only under a launcher
  // (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_RANK in the environment).
  static Comm& world();
  // This process alone (size 1, no MPI calls): e.g. rank 0 timing a job by itself.
  static Comm& self();
  static bool built_with_mpi();

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }  // rank among the ranks on this node
  int local_size() const { return local_size_; }
  bool root() const { return rank_ == 0; }
  bool distributed() const { return size_ > 1; }

  void barrier();
  std::string bcast(const std::string& s);                  // rank 0's s on every rank
  std::vector<std::string> gather(const std::string& s);   // rank 0: every rank's, in rank order
  std::vector<std::string> allgather(const std::string& s);

  // Every rank says whether it failed (error non-empty). When any did, every rank throws
  // JobFailed with the first failed rank's message, prefixed "rank R of N: "; exit_code is
  // that rank's (2: bad input, 3: out of memory, 130: interrupted).
  void agree(const std::string& error, int exit_code = 2);
  // Runs fn on this rank and agree()s on how it went: an Error it throws becomes every rank's
  // JobFailed (exit code 3 for OutOfMemory, else 2).
  void agree_on(const std::function<void()>& fn);

  // Ends the job from one rank without waiting for the others (an error outside agree()).
  [[noreturn]] void abort(int code);
  void finalize();  // at normal exit (MPI_Finalize)

 private:
  explicit Comm(bool world);
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  bool mpi_ = false;
};

}  // namespace phi3
