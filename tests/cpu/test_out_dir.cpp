// The output directory and the atomic writer (issue 22 item 1): temp files of a killed write
// are named when they are all --out holds, removed by --force / --resume; a process killed
// inside a write (test-only pause, PHI3_TEST_PAUSE_IN_WRITE) leaves the old file whole.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "patching/out_dir.h"
#include "runtime/file_util.h"
#include "test_util.h"

namespace phi3 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::error_of;
using test::slurp;

TEST(AtomicWrite, LeavesNoTempFileAndReplacesWhole) {
  const std::string dir = test::temp_dir("atomic");
  const std::string p = path_join(dir, "a.json");
  write_file_atomic(p, "first\n");
  write_file_atomic(p, "second, longer\n");
  EXPECT_EQ(slurp(p), "second, longer\n");
  EXPECT_TRUE(stale_temp_files(dir).empty());
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(AtomicWrite, StaleTempNames) {
  EXPECT_TRUE(is_stale_temp_name("batch-000003.json.tmp.4711"));
  EXPECT_TRUE(is_stale_temp_name("results.json.tmp.1"));
  EXPECT_FALSE(is_stale_temp_name("batch-000003.json"));
  EXPECT_FALSE(is_stale_temp_name("notes.tmp.txt"));
  EXPECT_FALSE(is_stale_temp_name("a.tmp."));
  EXPECT_FALSE(is_stale_temp_name(".tmp.12"));
  EXPECT_FALSE(is_stale_temp_name("x.tmp.12a"));
}

// A child process killed (SIGKILL) while paused inside write_file_atomic: the destination
// keeps its old content, and the half-written temp file is what stale_temp_files finds.
TEST(AtomicWrite, KillInsideTheWriteKeepsTheOldFile) {
  const std::string dir = test::temp_dir("atomic-kill");
  const std::string p = path_join(dir, "batch-000001.json");
  write_file_atomic(p, "old\n");
  const std::string content(1 << 16, 'x');
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::setenv("PHI3_TEST_PAUSE_IN_WRITE", "batch-000001.json", 1);
    write_file_atomic(p, content);
    ::_exit(0);
  }
  std::vector<std::string> temps;
  test::wait_for([&] {
    temps = stale_temp_files(dir);
    return !temps.empty() && test::size_or_zero(temps[0]) == content.size() / 2;
  }, 30);
  ::kill(pid, SIGKILL);
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFSIGNALED(st)) << "the writer finished before it was killed";
  ASSERT_EQ(temps.size(), 1u);
  EXPECT_EQ(temps[0], p + ".tmp." + std::to_string(pid));
  EXPECT_EQ(fs::file_size(temps[0]), content.size() / 2);
  EXPECT_EQ(slurp(p), "old\n");
}

struct OutDirCase : ::testing::Test {
  std::string dir = test::temp_dir("outdir");
  std::string ck = path_join(dir, "checkpoints");
  OutDirRequest req(bool force, bool resume) const { return {dir, "results.json", {"checkpoints"}, force, resume}; }
  void put(const std::string& path) {
    make_dirs(fs::path(path).parent_path().string());
    write_file_atomic(path, "{}\n");
  }
  void put_raw(const std::string& path) {  // as a killed write leaves it
    make_dirs(fs::path(path).parent_path().string());
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fputs("{\"fingerpr", f);
    std::fclose(f);
  }
};

TEST_F(OutDirCase, OnlyTempFilesAreNamedInTheRefusal) {
  put_raw(ck + "/batch-000000.json.tmp.12345");
  put_raw(dir + "/results.json.tmp.12345");
  const std::string e = error_of([&] { prepare_out_dir(req(false, false)); });
  EXPECT_NE(e.find("temp files of an interrupted write"), std::string::npos) << e;
  EXPECT_NE(e.find("batch-000000.json.tmp.12345"), std::string::npos) << e;
  EXPECT_NE(e.find("results.json.tmp.12345"), std::string::npos) << e;
  EXPECT_NE(e.find("--resume"), std::string::npos) << e;
  EXPECT_NE(e.find("--force"), std::string::npos) << e;
  EXPECT_EQ(stale_temp_files_in(req(false, false)).size(), 2u) << "a refusal removes nothing";
}

TEST_F(OutDirCase, ResumeAndForceRemoveTempFiles) {
  put(ck + "/batch-000000.json");
  put_raw(ck + "/batch-000001.json.tmp.999");
  const std::string e = error_of([&] { prepare_out_dir(req(false, false)); });
  EXPECT_NE(e.find("holds 1 finished batches"), std::string::npos) << e;
  EXPECT_NE(e.find("batch-000001.json.tmp.999"), std::string::npos) << e;
  auto removed = prepare_out_dir(req(false, true));
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0], ck + "/batch-000001.json.tmp.999");
  EXPECT_TRUE(fs::exists(ck + "/batch-000000.json")) << "--resume keeps the finished batches";
  EXPECT_FALSE(fs::exists(removed[0]));
  put_raw(dir + "/report.html.tmp.7");
  removed = prepare_out_dir(req(true, false));
  EXPECT_EQ(removed.size(), 1u);
  EXPECT_TRUE(stale_temp_files_in(req(false, false)).empty());
}

TEST_F(OutDirCase, OtherFilesAreNotTempFiles) {
  put(dir + "/notes.tmp.txt");
  put(dir + "/mine.csv");
  EXPECT_NO_THROW(prepare_out_dir(req(false, false)));
  EXPECT_TRUE(fs::exists(dir + "/notes.tmp.txt"));
}

TEST_F(OutDirCase, CircuitDirectoryOffersForceOnly) {
  put_raw(dir + "/edges.csv.tmp.31");
  const std::string e = error_of([&] { prepare_out_dir({dir, "circuit.json", {}, false, false}); });
  EXPECT_NE(e.find("edges.csv.tmp.31"), std::string::npos) << e;
  EXPECT_EQ(e.find("--resume"), std::string::npos) << e;
  EXPECT_EQ(prepare_out_dir({dir, "circuit.json", {}, true, false}).size(), 1u);
}

// The CLI end to end: a run killed inside the write of its second checkpoint (every time: the
// writer pauses there) resumes to the uninterrupted results, with no temp file left.
TEST(OutDirCli, RunKilledInsideACheckpointWriteResumes) {
  const std::string dir = test::temp_dir("cli-kill-write");
  const std::string pairs = test::source_dir() + "/data/temporal_scope_pairs.json";
  const std::string common = "run --device cpu --pairs '" + pairs + "' --batch 8 --hooks resid_pre --method attribution";
  ASSERT_EQ(test::run_cli(PHI3_CLI, common + " --out '" + dir + "/ref'", dir), 0) << slurp(dir + "/stderr.txt");
  const std::string out = dir + "/killed";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::setenv("PHI3_TEST_PAUSE_IN_WRITE", "batch-000001.json", 1);
    const std::string cmd = "exec '" + std::string(PHI3_CLI) + "' " + common + " --out '" + out + "' >/dev/null 2>&1";
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait for the paused write (the temp files of other batches' writes come and go).
  std::vector<std::string> temps;
  auto paused = [&] {
    temps = stale_temp_files(out + "/checkpoints");
    return temps.size() == 1 && fs::path(temps[0]).filename().string().rfind("batch-000001.json.tmp.", 0) == 0 &&
           test::size_or_zero(temps[0]) > 0;
  };
  test::wait_for(paused, 120);
  ::kill(pid, SIGKILL);
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFSIGNALED(st)) << "the run ended before it was killed";
  ASSERT_EQ(temps.size(), 1u);
  EXPECT_TRUE(fs::exists(out + "/checkpoints/batch-000000.json"));
  EXPECT_FALSE(fs::exists(out + "/checkpoints/batch-000001.json"));
  EXPECT_FALSE(fs::exists(out + "/results.json"));

  EXPECT_EQ(test::run_cli(PHI3_CLI, common + " --out '" + out + "'", dir), 2);
  const std::string err = slurp(dir + "/stderr.txt");
  EXPECT_NE(err.find(fs::path(temps[0]).filename().string()), std::string::npos) << err;
  ASSERT_EQ(test::run_cli(PHI3_CLI, common + " --out '" + out + "' --resume", dir), 0) << slurp(dir + "/stderr.txt");
  EXPECT_NE(slurp(dir + "/stderr.txt").find("removed 1 temp files"), std::string::npos);
  EXPECT_TRUE(stale_temp_files(out + "/checkpoints").empty());
  EXPECT_TRUE(stale_temp_files(out).empty());
  const json ref = json::parse(slurp(dir + "/ref/results.json")), got = json::parse(slurp(out + "/results.json"));
  EXPECT_EQ(got["work"]["resumed_batches"], 1);
  ASSERT_EQ(ref["results"].size(), 1u);
  ASSERT_EQ(got["results"].size(), 1u);
  const json &a = ref["results"][0]["values"], &b = got["results"][0]["values"];
  ASSERT_EQ(a.size(), b.size());
  ASSERT_GT(a.size(), 0u);
  for (size_t l = 0; l < a.size(); ++l) {
    ASSERT_EQ(a[l].size(), b[l].size());
    for (size_t p = 0; p < a[l].size(); ++p)
      EXPECT_NEAR(a[l][p].get<double>(), b[l][p].get<double>(), 1e-6) << "layer " << l << " position " << p;
  }
}

}  // namespace
}  // namespace phi3
