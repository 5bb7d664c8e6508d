// Resumable runs: every finished pair batch is written atomically (by rank 0) to
// <out>/checkpoints/batch-NNNNNN.json with the job's fingerprint (model, pairs file
// contents, hooks, method, direction, BOS, batch size, naive, device kind and precision,
// T). `run --resume` loads the batches whose fingerprint equals this run's and computes only
// the rest; the final results equal an uninterrupted run's. A checkpoint of another job is
// an error that names the file and the first field that differs.
#pragma once
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "patching/batch_result.h"

namespace phi3 {

class Backend;
struct Model;

nlohmann::json job_fingerprint(const ExperimentOptions& opt, const Model& m, const Backend& be, int T, int n_batches);

class CheckpointDir {
 public:
  // <out_dir>/<name>/ (the --verify-top phase keeps its batches in checkpoints-verify).
  explicit CheckpointDir(const std::string& out_dir, const std::string& name = "checkpoints");
  const std::string& dir() const { return dir_; }
  int count() const;    // batch files present
  void clear() const;   // removes every batch file (a fresh run)
  // The finished batches of the job `fp` (throws naming the file if one is malformed or was
  // made by another job).
  std::map<int, BatchResult> load(const nlohmann::json& fp) const;
  void save(const nlohmann::json& fp, const BatchResult& r) const;

 private:
  std::string file(int batch) const;
  std::string dir_;
};

}  // namespace phi3
