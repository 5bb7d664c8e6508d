// The output directory of `run` and `circuit`: checked before any work, so no work is wasted
// and nothing of an earlier run is silently replaced. Temp files that a killed write left
// behind (`*.tmp.<pid>`, see write_file_atomic) in it or its checkpoint directories are removed
// by --force and --resume, and named in the refusal when they are all the directory holds.
#pragma once
#include <string>
#include <vector>

namespace phi3 {

struct OutDirRequest {
  std::string dir;                      // --out
  std::string marker;                   // the file whose presence marks finished results
  std::vector<std::string> checkpoint_dirs;  // subdirectories holding resumable batches
  bool force = false;                   // replace the results and drop the checkpoints
  bool resume = false;                  // continue from the checkpoints
};

// Creates the directory and probes a write; throws (naming the directory and what to pass)
// when it holds the marker without force, finished checkpoints without resume or force, or
// only temp files of a killed write without either. Returns the temp files it removed.
std::vector<std::string> prepare_out_dir(const OutDirRequest& req);

// The temp files of killed writes in dir and its checkpoint directories.
std::vector<std::string> stale_temp_files_in(const OutDirRequest& req);

}  // namespace phi3
