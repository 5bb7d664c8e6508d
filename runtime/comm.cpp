#include "runtime/comm.h"

#include <chrono>
#include <cstdlib>
#include <thread>
#include <cstring>

#if defined(PHI3_WITH_MPI)
#include <mpi.h>
#endif

namespace phi3 {

namespace {
bool under_launcher() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

#if defined(PHI3_WITH_MPI)
void mpi_check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, msg, &n);
    throw Error(std::string("MPI: ") + what + " failed: " + std::string(msg, n));
  }
}
#endif
}  // namespace

bool Comm::built_with_mpi() {
#if defined(PHI3_WITH_MPI)
  return true;
#else
  return false;
#endif
}

Comm& Comm::world() {
  static Comm c(true);
  return c;
}

Comm& Comm::self() {
  static Comm c(false);
  return c;
}

Comm::Comm(bool world) {
  if (!world) return;
#if defined(PHI3_WITH_MPI)
  if (!under_launcher()) return;
  int provided = 0;
  mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  mpi_ = true;
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  MPI_Comm node;
  mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type");
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &local_size_);
  MPI_Comm_free(&node);
#else
  if (under_launcher()) {
    // Each process would run the whole job alone and they would overwrite each other's files.
    const char* n = std::getenv("OMPI_COMM_WORLD_SIZE");
    if (n && std::atoi(n) > 1)
      throw Error("started by mpirun with " + std::string(n) +
                  " ranks, but this binary was built without MPI (configure with -DPHI3_MPI=ON and "
                  "install libopenmpi-dev)");
  }
#endif
}

void Comm::barrier() {
#if defined(PHI3_WITH_MPI)
  if (mpi_ && size_ > 1) {
    // Waits without spinning (a rank idle at a barrier leaves its core to the others).
    MPI_Request req;
    mpi_check(MPI_Ibarrier(MPI_COMM_WORLD, &req), "MPI_Ibarrier");
    for (int done = 0;;) {
      mpi_check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
#endif
}

std::string Comm::bcast(const std::string& s) {
#if defined(PHI3_WITH_MPI)
  if (mpi_ && size_ > 1) {
    long long n = static_cast<long long>(s.size());
    mpi_check(MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD), "MPI_Bcast");
    std::string out = rank_ == 0 ? s : std::string(static_cast<size_t>(n), '\0');
    // Sent in pieces of at most 1 GiB (MPI counts are int).
    for (long long off = 0; off < n; off += (1 << 30)) {
      const int len = static_cast<int>(std::min<long long>(n - off, 1 << 30));
      mpi_check(MPI_Bcast(&out[static_cast<size_t>(off)], len, MPI_CHAR, 0, MPI_COMM_WORLD), "MPI_Bcast");
    }
    return out;
  }
#endif
  return s;
}

std::vector<std::string> Comm::gather(const std::string& s) {
#if defined(PHI3_WITH_MPI)
  if (mpi_ && size_ > 1) {
    long long n = static_cast<long long>(s.size());
    std::vector<long long> sizes(rank_ == 0 ? size_ : 0);
    mpi_check(MPI_Gather(&n, 1, MPI_LONG_LONG, sizes.data(), 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD), "MPI_Gather");
    std::vector<std::string> out;
    // Point to point, rank by rank (no int overflow of Gatherv displacements).
    if (rank_ == 0) {
      out.resize(size_);
      out[0] = s;
      for (int r = 1; r < size_; ++r) {
        out[r].resize(static_cast<size_t>(sizes[r]));
        for (long long off = 0; off < sizes[r]; off += (1 << 30)) {
          const int len = static_cast<int>(std::min<long long>(sizes[r] - off, 1 << 30));
          mpi_check(MPI_Recv(&out[r][static_cast<size_t>(off)], len, MPI_CHAR, r, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
                    "MPI_Recv");
        }
      }
    } else {
      for (long long off = 0; off < n; off += (1 << 30)) {
        const int len = static_cast<int>(std::min<long long>(n - off, 1 << 30));
        mpi_check(MPI_Send(s.data() + off, len, MPI_CHAR, 0, 7, MPI_COMM_WORLD), "MPI_Send");
      }
    }
    return out;
  }
#endif
  return {s};
}

std::vector<std::string> Comm::allgather(const std::string& s) {
  std::vector<std::string> all = gather(s);
  if (size_ == 1) return all;
  std::string packed;
  if (rank_ == 0)
    for (const auto& x : all) {
      const uint64_t n = x.size();
      packed.append(reinterpret_cast<const char*>(&n), sizeof n);
      packed += x;
    }
  packed = bcast(packed);
  std::vector<std::string> out;
  for (size_t off = 0; off < packed.size();) {
    uint64_t n = 0;
    std::memcpy(&n, packed.data() + off, sizeof n);
    off += sizeof n;
    out.push_back(packed.substr(off, n));
    off += n;
  }
  return out;
}

void Comm::agree(const std::string& error, int exit_code) {
  if (size_ == 1) {
    if (!error.empty()) throw JobFailed(error, exit_code);
    return;
  }
  const std::vector<std::string> all = allgather(std::to_string(exit_code) + "\n" + error);
  for (int r = 0; r < size_; ++r) {
    const size_t nl = all[r].find('\n');
    const std::string msg = all[r].substr(nl + 1);
    if (msg.empty()) continue;
    throw JobFailed("rank " + std::to_string(r) + " of " + std::to_string(size_) + ": " + msg,
                    std::atoi(all[r].substr(0, nl).c_str()));
  }
}

void Comm::agree_on(const std::function<void()>& fn) {
  std::string err;
  int code = 2;
  try {
    fn();
  } catch (const JobFailed&) {
    throw;  // already agreed by every rank
  } catch (const OutOfMemory& e) {
    err = e.what();
    code = 3;
  } catch (const Error& e) {
    err = e.what();
  }
  agree(err, code);
}

void Comm::abort(int code) {
#if defined(PHI3_WITH_MPI)
  if (mpi_ && size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::_Exit(code);
}

void Comm::finalize() {
#if defined(PHI3_WITH_MPI)
  int done = 0;
  if (mpi_ && MPI_Finalized(&done) == MPI_SUCCESS && !done) MPI_Finalize();
#endif
}

}  // namespace phi3
