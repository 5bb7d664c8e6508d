#include "runtime/hf_cache.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <regex>
#include <vector>

#include "runtime/closest_name.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

namespace {

namespace fs = std::filesystem;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// The cache roots to look in, most specific first, without repeats.
std::vector<std::string> cache_roots() {
  std::vector<std::string> r;
  auto add = [&](const std::string& p) {
    if (!p.empty() && std::find(r.begin(), r.end(), p) == r.end()) r.push_back(p);
  };
  add(env("HF_HUB_CACHE"));
  add(env("HUGGINGFACE_HUB_CACHE"));
  if (!env("HF_HOME").empty()) add(path_join(env("HF_HOME"), "hub"));
  if (!env("XDG_CACHE_HOME").empty()) add(path_join(env("XDG_CACHE_HOME"), "huggingface/hub"));
  if (!env("HOME").empty()) add(path_join(env("HOME"), ".cache/huggingface/hub"));
  return r;
}

bool is_repo_folder(const std::string& dir) {
  return !file_exists(path_join(dir, "config.json")) &&
         (dir_exists(path_join(dir, "snapshots")) || dir_exists(path_join(dir, "refs")));
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::vector<std::string> snapshot_names(const std::string& repo) {
  std::vector<std::string> v;
  std::error_code ec;
  const std::string dir = path_join(repo, "snapshots");
  if (!fs::is_directory(dir, ec)) return v;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_directory(ec)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

// The model ids every cache root holds (models--org--name -> org/name), for suggestions.
std::vector<std::string> cached_ids() {
  std::vector<std::string> ids;
  std::error_code ec;
  for (const std::string& root : cache_roots()) {
    if (!fs::is_directory(root, ec)) continue;
    for (const auto& e : fs::directory_iterator(root, ec)) {
      std::string n = e.path().filename().string();
      if (n.compare(0, 8, "models--") != 0 || !e.is_directory(ec)) continue;
      n = n.substr(8);
      if (const size_t p = n.find("--"); p != std::string::npos) n.replace(p, 2, "/");
      if (std::find(ids.begin(), ids.end(), n) == ids.end()) ids.push_back(n);
    }
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::string join(const std::vector<std::string>& v, const std::string& sep = ", ") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

std::string fetch_hint(const std::string& id, const std::string& rev) {
  const std::string r = rev.empty() ? std::string() : " --revision " + rev;
  return "fetch it with `huggingface-cli download " + id + r + "` (or `hf download " + id + r + "`)";
}

// The snapshot of `rev` in the cache repo folder `repo` (what = the id or folder, for messages).
std::string snapshot_of(const std::string& repo, const std::string& what, const std::string& id,
                        const std::string& rev_given) {
  const std::string rev = rev_given.empty() ? "main" : rev_given;
  std::string snap;
  const std::string ref = path_join(path_join(repo, "refs"), rev);
  const std::vector<std::string> snaps = snapshot_names(repo);
  if (file_exists(ref)) {
    const std::string hash = trim(read_text_file(ref, "Hugging Face cache ref"));
    snap = path_join(path_join(repo, "snapshots"), hash);
    if (!dir_exists(snap))
      throw Error("model " + what + ": " + ref + " names snapshot " + hash + ", which is not in " +
                  path_join(repo, "snapshots") + " (an interrupted download?); " + fetch_hint(id, rev_given));
  } else if (dir_exists(path_join(path_join(repo, "snapshots"), rev))) {
    snap = path_join(path_join(repo, "snapshots"), rev);
  } else {
    std::vector<std::string> match;
    if (rev.size() >= 7 && rev.find_first_not_of("0123456789abcdef") == std::string::npos)
      for (const auto& s : snaps)
        if (s.compare(0, rev.size(), rev) == 0) match.push_back(s);
    if (match.size() > 1)
      throw Error("model " + what + ": revision " + rev + " is the prefix of several snapshots (" + join(match) +
                  "); give more of the hash");
    if (match.empty()) {
      std::vector<std::string> refs;
      std::error_code ec;
      if (fs::is_directory(path_join(repo, "refs"), ec))
        for (const auto& e : fs::recursive_directory_iterator(path_join(repo, "refs"), ec))
          if (e.is_regular_file(ec)) refs.push_back(fs::relative(e.path(), path_join(repo, "refs"), ec).string());
      std::sort(refs.begin(), refs.end());
      throw Error("model " + what + ": revision '" + rev + "' is not in the Hugging Face cache folder " + repo +
                  " (refs: " + (refs.empty() ? std::string("none") : join(refs)) +
                  "; snapshots: " + (snaps.empty() ? std::string("none") : join(snaps)) + "); " +
                  fetch_hint(id, rev));
    }
    snap = path_join(path_join(repo, "snapshots"), match.front());
  }
  if (!file_exists(path_join(snap, "config.json")))
    throw Error("model " + what + ": snapshot " + snap + " has no config.json (an incomplete download?); " +
                fetch_hint(id, rev_given));
  return snap;
}

}  // namespace

std::string resolve_model_dir(const std::string& value) {
  if (dir_exists(value)) return is_repo_folder(value) ? snapshot_of(value, value, value, "") : value;
  std::string base = value, rev;
  if (const size_t at = value.rfind('@'); at != std::string::npos && at > 0) {
    base = value.substr(0, at);
    rev = value.substr(at + 1);
    if (rev.empty()) throw Error("model " + value + ": no revision after '@'");
  }
  if (!rev.empty() && dir_exists(base)) {
    if (!is_repo_folder(base))
      throw Error("model " + value + ": '" + base + "' is a checkpoint directory, not a Hugging Face cache folder "
                  "(models--org--name), so it has no revision '" + rev + "'");
    return snapshot_of(base, value, base, rev);
  }
  static const std::regex id_re("[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?");
  if (!std::regex_match(base, id_re) || base.find("..") != std::string::npos) return value;
  std::string folder = "models--" + base;
  for (size_t p; (p = folder.find('/')) != std::string::npos;) folder.replace(p, 1, "--");
  std::vector<std::string> looked;
  for (const std::string& root : cache_roots()) {
    const std::string repo = path_join(root, folder);
    looked.push_back(repo);
    if (dir_exists(repo)) return snapshot_of(repo, base, base, rev);
  }
  const std::vector<std::string> ids = cached_ids();
  std::string guess = closest_name(base, ids);
  const std::string at = rev.empty() ? std::string() : "@" + rev;
  // A bare name (no org) that is in no cache: a missing directory for the loader to name, unless
  // the cache holds a model of that name ("Phi-3-mini-4k-instruct": microsoft/Phi-3-mini-4k-instruct).
  if (base.find('/') == std::string::npos) {
    std::vector<std::string> names;
    for (const auto& id : ids) names.push_back(id.substr(id.find('/') + 1));
    const std::string name = closest_name(base, names);
    if (name.empty()) {
      if (rev.empty()) return value;
    } else {
      for (const auto& id : ids)
        if (id.substr(id.find('/') + 1) == name) guess = id;
    }
  }
  throw Error("model " + value + ": no such directory, and not in the Hugging Face cache (looked in " +
              (looked.empty() ? std::string("no folder: HOME, HF_HOME and HF_HUB_CACHE are unset") : join(looked)) +
              ")" + (guess.empty() ? "; " : "; did you mean " + guess + at + " (in the cache)? Or ") +
              fetch_hint(base, rev));
}

}  // namespace phi3
