// Models by Hugging Face hub id (issue 30 item 2): `--model org/name[@revision]` and a cache
// repo folder resolve through the hub cache's own layout (runtime/hf_cache.h). Each test builds
// a cache around the embedded model: blobs named by hash, snapshots/<commit>/<file> symlinks to
// ../../blobs/<hash>, refs/main and refs/other naming two snapshots (the second with another
// config.json and no weights).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "model/model.h"
#include "runtime/error.h"
#include "runtime/hf_cache.h"
#include "test_util.h"

namespace phi3 {
namespace {

namespace fs = std::filesystem;

const std::string kMain = "0123456789abcdef0123456789abcdef01234567";
const std::string kOther = "fedcba9876543210fedcba9876543210fedcba98";

void spit(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

std::string hex_of(const std::string& text) {  // a blob name: 64 hex digits from the content
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016zx", std::hash<std::string>{}(text));
  return std::string(buf) + std::string(48, '0');
}

// One snapshot: each file's content stored once under blobs/, linked from snapshots/<commit>/.
void add_snapshot(const fs::path& repo, const std::string& commit, const std::map<std::string, std::string>& files) {
  for (const auto& [name, text] : files) {
    const std::string blob = hex_of(text);
    if (!fs::exists(repo / "blobs" / blob)) spit(repo / "blobs" / blob, text);
    fs::create_directories(repo / "snapshots" / commit);
    fs::create_symlink(fs::path("../../blobs") / blob, repo / "snapshots" / commit / name);
  }
}

// models--org--tiny under `hub`: refs/main -> kMain (the embedded model), refs/other -> kOther
// (config.json with one more field, no model.safetensors).
fs::path make_cache(const fs::path& hub, const std::string& id = "org/tiny", const std::string& main = kMain) {
  std::string folder = "models--" + id;
  for (size_t p; (p = folder.find('/')) != std::string::npos;) folder.replace(p, 1, "--");
  const fs::path repo = hub / folder;
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(test::source_dir() + "/data/models/tiny-temporal-phi3"))
    files[e.path().filename().string()] = test::slurp(e.path().string());
  add_snapshot(repo, main, files);
  std::string cfg = files.at("config.json");
  cfg.insert(cfg.find('{') + 1, "\n  \"_revision\": \"other\",");
  files["config.json"] = cfg;
  files.erase("model.safetensors");
  add_snapshot(repo, kOther, files);
  spit(repo / "refs" / "main", main);  // as huggingface_hub writes it: the hash, no newline
  spit(repo / "refs" / "other", kOther + "\n");
  return repo;
}

class HfCache : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVars) {
      const char* old = std::getenv(v);
      saved_[v] = old ? std::optional<std::string>(old) : std::nullopt;
      ::unsetenv(v);
    }
    dir_ = test::temp_dir("hfcache");
    // No variable points at the real cache: HOME is a fresh directory.
    ::setenv("HOME", (dir_ + "/home").c_str(), 1);
  }
  void TearDown() override {
    for (const auto& [v, old] : saved_) {
      if (old) {
        ::setenv(v.c_str(), old->c_str(), 1);
      } else {
        ::unsetenv(v.c_str());
      }
    }
    fs::remove_all(dir_);
  }
  static constexpr const char* kVars[] = {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME"};
  std::map<std::string, std::optional<std::string>> saved_;
  std::string dir_;
};

TEST_F(HfCache, IdResolvesToTheSnapshotOfRefsMain) {
  const fs::path repo = make_cache(dir_ + "/hub");
  ::setenv("HF_HUB_CACHE", (dir_ + "/hub").c_str(), 1);
  const std::string snap = (repo / "snapshots" / kMain).string();
  EXPECT_EQ(resolve_model_dir("org/tiny"), snap);
  EXPECT_EQ(resolve_model_dir("org/tiny@main"), snap);
  // The snapshot's files are symlinks into blobs/: config and tokenizer load through them.
  EXPECT_TRUE(fs::is_symlink(repo / "snapshots" / kMain / "config.json"));
  auto m = load_model_meta(snap);
  EXPECT_EQ(m->cfg.num_hidden_layers, 4);
}

TEST_F(HfCache, RevisionByRefByHashAndByHashPrefix) {
  const fs::path repo = make_cache(dir_ + "/hub");
  ::setenv("HF_HUB_CACHE", (dir_ + "/hub").c_str(), 1);
  const std::string other = (repo / "snapshots" / kOther).string();
  EXPECT_EQ(resolve_model_dir("org/tiny@other"), other);  // refs/other (with a trailing newline)
  EXPECT_EQ(resolve_model_dir("org/tiny@" + kOther), other);
  EXPECT_EQ(resolve_model_dir("org/tiny@fedcba98"), other);
  EXPECT_EQ(resolve_model_dir("org/tiny@" + kMain.substr(0, 7)), (repo / "snapshots" / kMain).string());
  // The other revision is another config.json.
  EXPECT_NE(test::slurp(other + "/config.json").find("\"_revision\": \"other\""), std::string::npos);
}

TEST_F(HfCache, RepoFolderGivenAsADirectory) {
  const fs::path repo = make_cache(dir_ + "/elsewhere");  // not under any cache root
  EXPECT_EQ(resolve_model_dir(repo.string()), (repo / "snapshots" / kMain).string());
  EXPECT_EQ(resolve_model_dir(repo.string() + "@other"), (repo / "snapshots" / kOther).string());
  // A checkpoint directory is itself, and has no revisions.
  const std::string plain = test::source_dir() + "/data/models/tiny-temporal-phi3";
  EXPECT_EQ(resolve_model_dir(plain), plain);
  EXPECT_EQ(test::error_of([&] { resolve_model_dir(plain + "@main"); }),
            "model " + plain + "@main: '" + plain +
                "' is a checkpoint directory, not a Hugging Face cache folder (models--org--name), so it has no "
                "revision 'main'");
}

TEST_F(HfCache, AnExistingDirectoryWinsOverAnId) {
  make_cache(dir_ + "/hub");
  ::setenv("HF_HUB_CACHE", (dir_ + "/hub").c_str(), 1);
  fs::create_directories(dir_ + "/cwd/org/tiny");
  const fs::path old = fs::current_path();
  fs::current_path(dir_ + "/cwd");
  const std::string got = resolve_model_dir("org/tiny");
  fs::current_path(old);
  EXPECT_EQ(got, "org/tiny");
}

TEST_F(HfCache, CacheRootPrecedence) {
  const fs::path a = make_cache(dir_ + "/hub-cache", "org/tiny", kMain);
  const std::string kHome = "1111111111111111111111111111111111111111";
  const fs::path b = make_cache(dir_ + "/hf-home/hub", "org/tiny", kHome);
  const fs::path c = make_cache(dir_ + "/xdg/huggingface/hub", "org/tiny", kHome);
  const fs::path d = make_cache(dir_ + "/home/.cache/huggingface/hub", "org/tiny", kHome);
  ::setenv("HF_HUB_CACHE", (dir_ + "/hub-cache").c_str(), 1);
  ::setenv("HF_HOME", (dir_ + "/hf-home").c_str(), 1);
  ::setenv("XDG_CACHE_HOME", (dir_ + "/xdg").c_str(), 1);
  EXPECT_EQ(resolve_model_dir("org/tiny"), (a / "snapshots" / kMain).string());
  ::unsetenv("HF_HUB_CACHE");
  EXPECT_EQ(resolve_model_dir("org/tiny"), (b / "snapshots" / kHome).string());
  ::unsetenv("HF_HOME");
  EXPECT_EQ(resolve_model_dir("org/tiny"), (c / "snapshots" / kHome).string());
  ::unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(resolve_model_dir("org/tiny"), (d / "snapshots" / kHome).string());
  // A model in a later root only is still found (every root is looked in, in that order).
  ::setenv("HF_HUB_CACHE", (dir_ + "/empty-hub").c_str(), 1);
  EXPECT_EQ(resolve_model_dir("org/tiny"), (d / "snapshots" / kHome).string());
}

TEST_F(HfCache, UnknownIdNamesEveryFolderAndTheFetchCommand) {
  ::setenv("HF_HUB_CACHE", (dir_ + "/hub").c_str(), 1);
  ::setenv("HF_HOME", (dir_ + "/hf-home").c_str(), 1);
  ::setenv("XDG_CACHE_HOME", (dir_ + "/xdg").c_str(), 1);
  EXPECT_EQ(test::error_of([] { resolve_model_dir("microsoft/Phi-3-mini-4k-instruct"); }),
            "model microsoft/Phi-3-mini-4k-instruct: no such directory, and not in the Hugging Face cache (looked in " +
                dir_ + "/hub/models--microsoft--Phi-3-mini-4k-instruct, " + dir_ +
                "/hf-home/hub/models--microsoft--Phi-3-mini-4k-instruct, " + dir_ +
                "/xdg/huggingface/hub/models--microsoft--Phi-3-mini-4k-instruct, " + dir_ +
                "/home/.cache/huggingface/hub/models--microsoft--Phi-3-mini-4k-instruct); fetch it with "
                "`huggingface-cli download microsoft/Phi-3-mini-4k-instruct` (or `hf download "
                "microsoft/Phi-3-mini-4k-instruct`)");
  // A bare name that is in no cache is left to the loader ("model directory ... does not exist").
  EXPECT_EQ(resolve_model_dir("no-such-dir"), "no-such-dir");
  // A path of more than two parts is a path, never an id.
  EXPECT_EQ(resolve_model_dir("data/models/nope"), "data/models/nope");
}

TEST_F(HfCache, MissingRevisionBrokenRefAndIncompleteSnapshot) {
  const fs::path repo = make_cache(dir_ + "/hub");
  ::setenv("HF_HUB_CACHE", (dir_ + "/hub").c_str(), 1);
  EXPECT_EQ(test::error_of([] { resolve_model_dir("org/tiny@v2"); }),
            "model org/tiny: revision 'v2' is not in the Hugging Face cache folder " + repo.string() +
                " (refs: main, other; snapshots: " + kMain + ", " + kOther +
                "); fetch it with `huggingface-cli download org/tiny --revision v2` (or `hf download org/tiny "
                "--revision v2`)");
  spit(repo / "refs" / "broken", "2222222222222222222222222222222222222222");
  EXPECT_EQ(test::error_of([] { resolve_model_dir("org/tiny@broken"); }),
            "model org/tiny: " + (repo / "refs" / "broken").string() +
                " names snapshot 2222222222222222222222222222222222222222, which is not in " +
                (repo / "snapshots").string() +
                " (an interrupted download?); fetch it with `huggingface-cli download org/tiny --revision broken` (or "
                "`hf download org/tiny --revision broken`)");
  // An id the cache holds in another spelling, or without its organisation: suggested.
  const std::string looked = dir_ + "/hub/models--org--Tiny, " + dir_ + "/home/.cache/huggingface/hub/models--org--Tiny";
  EXPECT_EQ(test::error_of([] { resolve_model_dir("org/Tiny"); }),
            "model org/Tiny: no such directory, and not in the Hugging Face cache (looked in " + looked +
                "); did you mean org/tiny (in the cache)? Or fetch it with `huggingface-cli download org/Tiny` (or "
                "`hf download org/Tiny`)");
  EXPECT_EQ(test::error_of([] { resolve_model_dir("tiny@other"); }),
            "model tiny@other: no such directory, and not in the Hugging Face cache (looked in " + dir_ +
                "/hub/models--tiny, " + dir_ +
                "/home/.cache/huggingface/hub/models--tiny); did you mean org/tiny@other (in the cache)? Or fetch it "
                "with `huggingface-cli download tiny --revision other` (or `hf download tiny --revision other`)");
  fs::remove(repo / "snapshots" / kOther / "config.json");
  EXPECT_EQ(test::error_of([] { resolve_model_dir("org/tiny@other"); }),
            "model org/tiny: snapshot " + (repo / "snapshots" / kOther).string() +
                " has no config.json (an incomplete download?); fetch it with `huggingface-cli download org/tiny "
                "--revision other` (or `hf download org/tiny --revision other`)");
}

// The CLI resolves --model for every command, says what it resolved to, and runs on it.
TEST_F(HfCache, CliRunsAModelByHubId) {
  const fs::path repo = make_cache(dir_ + "/hub");
  ::setenv("HF_HUB_CACHE", (dir_ + "/hub").c_str(), 1);
  const std::string snap = (repo / "snapshots" / kMain).string();
  const std::string out = dir_ + "/out";
  fs::create_directories(out);
  ASSERT_EQ(test::run_cli(PHI3_CLI, "forward --device cpu --model org/tiny", out), 0)
      << test::slurp(out + "/stderr.txt");
  EXPECT_NE(test::slurp(out + "/stderr.txt").find("[phi3patch] model org/tiny \u2192 " + snap + "\n"),
            std::string::npos)
      << test::slurp(out + "/stderr.txt");
  EXPECT_NE(test::slurp(out + "/stdout.txt").find("logit"), std::string::npos);

  ASSERT_EQ(test::run_cli(PHI3_CLI,
                          "run --device cpu --model org/tiny --method attribution --hooks resid_pre --out " + out +
                              "/run",
                          out),
            0)
      << test::slurp(out + "/stderr.txt");
  EXPECT_NE(test::slurp(out + "/stdout.txt").find("model: " + snap), std::string::npos);

  ASSERT_EQ(test::run_cli(PHI3_CLI, "tokenize --model org/tiny@other hello", out), 0);
  EXPECT_NE(test::slurp(out + "/stderr.txt").find("model org/tiny@other \u2192 " + (repo / "snapshots" / kOther).string()),
            std::string::npos);

  // @other has no weights: the loader names the snapshot directory.
  EXPECT_EQ(test::run_cli(PHI3_CLI, "forward --device cpu --model org/tiny@other", out), 2);
  EXPECT_NE(test::slurp(out + "/stderr.txt").find((repo / "snapshots" / kOther).string()), std::string::npos);

  EXPECT_EQ(test::run_cli(PHI3_CLI, "run --model org/nope --out " + out + "/run2", out), 2);
  EXPECT_NE(test::slurp(out + "/stderr.txt")
                .find("phi3patch: error: model org/nope: no such directory, and not in the Hugging Face cache "
                      "(looked in " + dir_ + "/hub/models--org--nope, "),
            std::string::npos)
      << test::slurp(out + "/stderr.txt");
  EXPECT_NE(test::slurp(out + "/stderr.txt").find("`huggingface-cli download org/nope`"), std::string::npos);
}

}  // namespace
}  // namespace phi3
