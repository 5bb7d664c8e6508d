#include "patching/out_dir.h"

#include <cstdio>

#include "patching/checkpoint.h"

#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

namespace {

std::string list(const std::vector<std::string>& paths) {
  std::string s;
  const size_t shown = std::min<size_t>(paths.size(), 5);
  for (size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + paths[i];
  if (paths.size() > shown) s += " and " + std::to_string(paths.size() - shown) + " more";
  return s;
}

}  // namespace

std::vector<std::string> stale_temp_files_in(const OutDirRequest& req) {
  std::vector<std::string> all = stale_temp_files(req.dir);
  for (const auto& sub : req.checkpoint_dirs)
    for (auto& p : stale_temp_files(path_join(req.dir, sub))) all.push_back(std::move(p));
  return all;
}

std::vector<std::string> prepare_out_dir(const OutDirRequest& req) {
  const std::string& out = req.dir;
  if (file_exists(out)) throw Error("--out '" + out + "' is a file, not a directory");
  make_dirs(out);
  if (file_exists(path_join(out, req.marker)) && !req.force)
    throw Error("output directory '" + out + "' already holds " + req.marker +
                "; pass --force to overwrite it or choose another --out");
  const std::vector<std::string> stale = stale_temp_files_in(req);
  const std::string stale_note =
      stale.empty() ? "" : " (and " + std::to_string(stale.size()) + " temp files of an interrupted write: " + list(stale) + ")";
  if (!req.force && !req.resume) {
    int finished = 0;
    std::string where;
    for (const auto& sub : req.checkpoint_dirs)
      if (const CheckpointDir ck(out, sub); ck.count() > 0) {
        finished += ck.count();
        if (where.empty()) where = ck.dir();
      }
    if (finished > 0)
      throw Error("output directory '" + out + "' holds " + std::to_string(finished) +
                  " finished batches of an earlier run (" + where + ")" + stale_note +
                  "; pass --resume to continue it, or --force to start over");
    if (!stale.empty())
      throw Error("output directory '" + out + "' holds temp files of an interrupted write: " + list(stale) +
                  "; pass " + std::string(req.checkpoint_dirs.empty() ? "" : "--resume to continue that run, or ") +
                  "--force to remove them and start over");
  }
  remove_files(stale);
  // Probe that we can write there.
  const std::string probe = path_join(out, ".phi3patch-write-test");
  write_file_atomic(probe, "ok\n");
  std::remove(probe.c_str());
  return stale;
}

}  // namespace phi3
