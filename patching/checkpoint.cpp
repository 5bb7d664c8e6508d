#include "patching/checkpoint.h"

#include <cstdio>
#include <filesystem>

#include "model/metric.h"
#include "model/model.h"
#include "runtime/backend.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
std::string fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}
}  // namespace

json job_fingerprint(const ExperimentOptions& opt, const Model& m, const Backend& be, int T, int n_batches) {
  json hooks = json::array();
  for (Hook h : opt.hooks) hooks.push_back(hook_name(h));
  std::string cfg;
  try {
    cfg = read_text_file(path_join(m.dir, "config.json"), "config");
  } catch (const Error&) {
  }
  json fp = {{"model", fs::absolute(m.dir).lexically_normal().string()},
          {"config_fnv1a", fnv1a(cfg)},
          {"pairs_fnv1a", fnv1a(read_text_file(opt.pairs_file, "pairs file"))},
          {"hooks", hooks},
          {"attribution", opt.attribution},
          {"activation", opt.activation},
          {"atp_star", opt.atp_star},
          {"verify_top", opt.verify_top},
          {"positions", opt.positions},
          {"direction", opt.noising ? "noise" : "denoise"},
          {"bos", opt.add_bos},
          {"batch_pairs", opt.batch_pairs},
          {"naive", opt.naive},
          {"device_kind", be.kind() == DeviceKind::CUDA ? "cuda" : "cpu"},
          {"weights", dtype_name(be.weight_dtype())},
          {"T", T},
          {"batches", n_batches}};
  // --metric (absent for the logit difference, so older checkpoints still match)
  if (opt.metric != MetricKind::LogitDiff) fp["metric"] = metric_name(opt.metric);
  // --no-mix and --layers (absent at their defaults, as --metric)
  if (!opt.mix) fp["mix"] = false;
  if (!opt.layers.empty()) fp["layers"] = opt.layers;
  return fp;
}

CheckpointDir::CheckpointDir(const std::string& out_dir, const std::string& name) : dir_(path_join(out_dir, name)) {}

std::string CheckpointDir::file(int batch) const {
  char name[32];
  std::snprintf(name, sizeof name, "batch-%06d.json", batch);
  return path_join(dir_, name);
}

int CheckpointDir::count() const {
  if (!dir_exists(dir_)) return 0;
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("batch-", 0) == 0 && e.path().extension() == ".json") ++n;
  }
  return n;
}

void CheckpointDir::clear() const {
  if (!dir_exists(dir_)) return;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("batch-", 0) == 0) fs::remove(e.path(), ec);
  }
}

std::map<int, BatchResult> CheckpointDir::load(const json& fp) const {
  std::map<int, BatchResult> out;
  if (!dir_exists(dir_)) return out;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("batch-", 0) == 0 && e.path().extension() == ".json") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    const std::string path = f.string();
    json j;
    try {
      j = json::parse(read_text_file(path, "checkpoint"));
    } catch (const json::exception& e) {
      throw Error("checkpoint " + path + ": not valid JSON (" + e.what() + "); delete it to recompute that batch");
    }
    if (!j.is_object() || !j.contains("fingerprint") || !j.contains("result"))
      throw Error("checkpoint " + path + ": not a phi3patch batch checkpoint");
    const json& have = j["fingerprint"];
    for (auto it = fp.begin(); it != fp.end(); ++it)
      if (!have.contains(it.key()) || have[it.key()] != it.value())
        throw Error("checkpoint " + path + " belongs to another run: its " + it.key() + " is " +
                    (have.contains(it.key()) ? have[it.key()].dump() : std::string("missing")) + ", this run's is " +
                    it.value().dump() + " (use the same options to resume, or --force to start over)");
    if (have.value("metric", "logit-diff") != fp.value("metric", "logit-diff"))
      throw Error("checkpoint " + path + " belongs to another run: its metric is " + have.value("metric", "logit-diff") +
                  ", this run's is " + fp.value("metric", "logit-diff") +
                  " (use the same options to resume, or --force to start over)");
    BatchResult r;
    try {
      r = batch_result_from_json(j["result"]);
    } catch (const Error& e) {
      throw Error("checkpoint " + path + ": " + e.what());
    }
    if (file(r.batch) != path) throw Error("checkpoint " + path + " holds batch " + std::to_string(r.batch));
    if (!r.has_summary) throw Error("checkpoint " + path + ": no batch summary");
    out[r.batch] = std::move(r);
  }
  return out;
}

void CheckpointDir::save(const json& fp, const BatchResult& r) const {
  make_dirs(dir_);
  write_file_atomic(file(r.batch), json{{"fingerprint", fp}, {"result", to_json(r)}}.dump() + "\n");
}

}  // namespace phi3
