// Distributed runs (issue 11) under OpenMPI's mpirun, on the CPU: the same results at any
// rank count, balanced work, resumable runs, and failures that stop the whole job with one
// clear error. Each case launches the real CLI (PHI3_CLI) through PHI3_MPIEXEC.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>
#include <sstream>
#include <thread>

#include "test_util.h"

namespace phi3 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string quote(const std::string& s) { return "'" + s + "'"; }
using test::slurp;
std::string model_dir() { return test::source_dir() + "/data/models/tiny-temporal-phi3"; }
std::string seed_pairs() { return test::source_dir() + "/data/temporal_scope_for_attribution_patching.json"; }
std::string many_pairs() { return test::source_dir() + "/data/temporal_scope_pairs.json"; }

struct Result {
  int code = -1;
  std::string out, err;
};

// `phi3patch ARGS` as one process (np = 0) or under mpirun with np ranks.
std::string command(int np, const std::string& args) {
  const std::string cli = quote(PHI3_CLI) + " " + args;
  if (np == 0) return cli;
  return quote(PHI3_MPIEXEC) + " " + PHI3_MPIEXEC_FLAGS + " -np " + std::to_string(np) + " " + cli;
}

Result sh(const std::string& cmd, const std::string& dir) {
  const std::string o = dir + "/stdout.txt", e = dir + "/stderr.txt";
  const int st = std::system((cmd + " >" + quote(o) + " 2>" + quote(e) + " </dev/null").c_str());
  Result r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = slurp(o);
  r.err = slurp(e);
  return r;
}

std::set<std::string> files_in(const std::string& dir) {
  std::set<std::string> s;
  for (const auto& e : fs::directory_iterator(dir)) s.insert(e.path().filename().string());
  return s;
}

void flatten(const json& j, std::vector<double>& out) {
  if (j.is_array()) {
    for (const auto& x : j) flatten(x, out);
  } else if (j.is_number()) {
    out.push_back(j.get<double>());
  } else if (j.is_null()) {
    out.push_back(NAN);
  }
}

// Every matrix (normalized metric, attribution) within 1e-6 and every per-prompt logit
// difference within 1e-5 of the reference run; same prompts, tokens and labels.
void expect_same_results(const json& ref, const json& got, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(ref["results"].size(), got["results"].size());
  EXPECT_EQ(ref["tokens"], got["tokens"]);
  EXPECT_EQ(ref["position_labels"], got["position_labels"]);
  EXPECT_NEAR(ref["clean_logit_diff"].get<double>(), got["clean_logit_diff"].get<double>(), 1e-5);
  for (size_t i = 0; i < ref["results"].size(); ++i) {
    const json &a = ref["results"][i], &b = got["results"][i];
    ASSERT_EQ(a["hook"], b["hook"]);
    ASSERT_EQ(a["method"], b["method"]);
    EXPECT_EQ(a["rows"], b["rows"]);
    std::vector<double> va, vb;
    flatten(a["values"], va);
    flatten(b["values"], vb);
    ASSERT_EQ(va.size(), vb.size());
    ASSERT_GT(va.size(), 0u);
    double worst = 0;
    for (size_t k = 0; k < va.size(); ++k) worst = std::max(worst, std::fabs(va[k] - vb[k]));
    EXPECT_LE(worst, 1e-6) << a["hook"] << " " << a["method"];
    if (a.contains("per_prompt_logit_diff")) {
      std::vector<double> pa, pb;
      flatten(a["per_prompt_logit_diff"], pa);
      flatten(b["per_prompt_logit_diff"], pb);
      ASSERT_EQ(pa.size(), pb.size());
      double w = 0;
      for (size_t k = 0; k < pa.size(); ++k) w = std::max(w, std::fabs(pa[k] - pb[k]));
      EXPECT_LE(w, 1e-5) << a["hook"] << " per-prompt logit differences";
      EXPECT_EQ(a["work"]["patched_runs"], b["work"]["patched_runs"]);
      EXPECT_EQ(a["work"]["token_layer_evals"], b["work"]["token_layer_evals"]);
    }
  }
  ASSERT_EQ(ref.contains("verify_top"), got.contains("verify_top"));
  if (ref.contains("verify_top")) {
    const json &a = ref["verify_top"]["nodes"], &b = got["verify_top"]["nodes"];
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i]["hook"], b[i]["hook"]);
      EXPECT_EQ(a[i]["row"], b[i]["row"]);
      EXPECT_EQ(a[i]["col"], b[i]["col"]);
      EXPECT_NEAR(a[i]["exact"].get<double>(), b[i]["exact"].get<double>(), 1e-6);
    }
  }
}

class Mpi : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("mpi"); }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  // Runs `run ARGS --out DIR/<tag>` with np ranks (0: no mpirun); returns its results.json.
  json run(int np, const std::string& args, const std::string& tag) {
    const std::string out = dir_ + "/" + tag;
    last_ = sh(command(np, "run --device cpu " + args + " --out " + quote(out) + " --force"), dir_);
    EXPECT_EQ(last_.code, 0) << last_.err;
    if (last_.code != 0) return json();
    out_files_[tag] = files_in(out);
    return json::parse(slurp(out + "/results.json"));
  }
  // The same experiment at 1, 2 and 3 ranks (and without mpirun) gives the same results.
  void same_at_any_scale(const std::string& args, int max_ranks, double max_imbalance) {
    json ref = run(0, args, "plain");
    ASSERT_FALSE(ref.is_null());
    EXPECT_EQ(ref["work"]["world_size"], 1);
    for (int np = 1; np <= max_ranks; ++np) {
      const std::string tag = "np" + std::to_string(np);
      json got = run(np, args, tag);
      ASSERT_FALSE(got.is_null());
      expect_same_results(ref, got, tag);
      EXPECT_EQ(out_files_[tag], out_files_["plain"]) << "rank 0 alone writes --out, the same files";
      const json& w = got["work"];
      EXPECT_EQ(w["world_size"], np);
      ASSERT_EQ(w["ranks"].size(), static_cast<size_t>(np));
      int64_t evals = 0;
      for (const auto& r : w["ranks"]) {
        EXPECT_GT(r["token_layer_evals"].get<int64_t>(), 0) << "every rank worked";
        evals += r["sweep_token_layer_evals"].get<int64_t>();
      }
      int64_t ref_evals = 0;
      for (const auto& r : ref["results"])
        if (r.contains("work")) ref_evals += r["work"]["token_layer_evals"].get<int64_t>();
      EXPECT_EQ(evals, ref_evals) << "the ranks' patched runs add up to the single process's";
      EXPECT_LT(w["imbalance_token_layer_evals"].get<double>(), max_imbalance) << w.dump();
      std::printf("    %s: %d ranks, imbalance %.4f (token-layer evals), %.3f (seconds)\n", args.c_str(), np,
                  w["imbalance_token_layer_evals"].get<double>(), w["imbalance_seconds"].get<double>());
    }
  }
  std::string dir_;
  Result last_;
  std::map<std::string, std::set<std::string>> out_files_;
};

// The seed experiment: one batch of 4 prompts, its patches split across the ranks by cost.
TEST_F(Mpi, SeedExperimentSameAtAnyScaleAndBalanced) {
  same_at_any_scale("--pairs " + quote(seed_pairs()), 4, 0.10);
}

// 24 pairs in 6 batches of 8: batches dealt to ranks, each round split by cost.
TEST_F(Mpi, PairsFileInBatchesSameAtAnyScale) {
  same_at_any_scale("--pairs " + quote(many_pairs()) + " --batch 8", 4, 0.10);
}

// The per-head hook (layers x positions x heads).
TEST_F(Mpi, ZHookSameAtAnyScale) {
  same_at_any_scale("--pairs " + quote(seed_pairs()) + " --hooks z,z_all_pos", 3, 0.10);
}

// AtP* on every rank's share, then the exact check of its top nodes split across the ranks.
TEST_F(Mpi, AtpStarVerifyTopSameAtAnyScale) {
  same_at_any_scale("--pairs " + quote(many_pairs()) + " --batch 8 --hooks resid_pre,k --method atp-star --verify-top 12",
                    3, 0.35);
}

// Starts a command in its own process group; returns its pid.
pid_t spawn(const std::string& cmd, const std::string& dir) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    const std::string full = cmd + " >" + quote(dir + "/bg_out.txt") + " 2>" + quote(dir + "/bg_err.txt") + " </dev/null";
    ::execl("/bin/sh", "sh", "-c", full.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}
bool is_checkpoint(const fs::path& p) {
  return p.filename().string().rfind("batch-", 0) == 0 && p.extension() == ".json";
}
int checkpoints(const std::string& out) {
  const std::string d = out + "/checkpoints";
  if (!fs::exists(d)) return 0;
  int n = 0;
  for (const auto& e : fs::directory_iterator(d)) n += is_checkpoint(e.path());
  return n;
}
// Temp files of killed writes in out/ and out/checkpoints/ (sorted paths).
std::vector<std::string> temp_files(const std::string& out) {
  std::vector<std::string> t;
  for (const std::string& d : {out, out + "/checkpoints"}) {
    std::error_code ec;
    if (!fs::exists(d, ec)) continue;
    for (const auto& e : fs::directory_iterator(d, ec))
      if (e.path().filename().string().find(".tmp.") != std::string::npos) t.push_back(e.path().string());
  }
  std::sort(t.begin(), t.end());
  return t;
}
using test::wait_for;

std::vector<pid_t> pids_with_env(const std::string& name, const std::string& value);

// A dataset run killed after some batches resumes with --resume (at another rank count too)
// and gives the uninterrupted run's results; without --resume it refuses to start over
// silently, and a checkpoint of other options is named.
// edges.csv as (upstream -> downstream) -> score.
std::map<std::string, double> edge_scores_of(const std::string& csv) {
  std::map<std::string, double> m;
  std::istringstream in(csv);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ls(line);
    std::string x;
    while (std::getline(ls, x, ',')) f.push_back(x);
    if (f.size() == 5) m[f[1] + "->" + f[2]] = std::stod(f[3]);
  }
  return m;
}

// `phi3patch circuit`: rank 0 scores, the distinct circuits of the grid are dealt to the ranks;
// the same scores, faithfulness curve and circuit at any rank count, and every rank worked.
TEST_F(Mpi, CircuitGridSameAtAnyScale) {
  const std::string args = "circuit --device cpu --edge-grid 0,5,10,20,50,100,200,300,479 ";
  auto circuit = [&](int np, const std::string& tag, const std::string& extra = "") {
    const std::string out = dir_ + "/" + tag;
    last_ = sh(command(np, args + extra + "--out " + quote(out)), dir_);
    EXPECT_EQ(last_.code, 0) << last_.err;
    out_files_[tag] = files_in(out);
    return std::make_pair(json::parse(slurp(out + "/circuit.json")), slurp(out + "/edges.csv"));
  };
  const auto [ref, ref_edges] = circuit(0, "plain");
  // The last case: two ranks with --batch 1 (each rank runs its circuits over both pair batches).
  const std::vector<std::tuple<int, std::string, std::string>> cases = {
      {1, "np1", ""}, {2, "np2", ""}, {3, "np3", ""}, {2, "np2-batch1", "--batch 1 "}};
  for (const auto& [np, tag, extra] : cases) {
    const auto [got, edges] = circuit(np, tag, extra);
    EXPECT_EQ(got["batches"].get<int>(), extra.empty() ? 1 : 2) << tag;
    // Rank 0's scores (its BLAS may run on fewer threads under mpirun: rounding apart).
    const auto a = edge_scores_of(edges), b = edge_scores_of(ref_edges);
    ASSERT_EQ(a.size(), b.size());
    double worst = 0, big = 0;
    for (const auto& [key, v] : b) {
      ASSERT_TRUE(a.count(key)) << key;
      worst = std::max(worst, std::fabs(a.at(key) - v));
      big = std::max(big, std::fabs(v));
    }
    EXPECT_LT(worst, 1e-5 * big) << tag;
    EXPECT_EQ(out_files_[tag], out_files_["plain"]);
    EXPECT_EQ(got["timing"]["world_size"].get<int>(), np);
    const auto per_rank = got["timing"]["circuits_per_rank"].get<std::vector<int>>();
    ASSERT_EQ(per_rank.size(), size_t(np));
    int total = 0;
    for (int n : per_rank) {
      EXPECT_GT(n, 0) << "every rank evaluated circuits";
      total += n;
    }
    EXPECT_EQ(total, ref["timing"]["circuit_forwards"].get<int>());
    ASSERT_EQ(got["faithfulness"].size(), ref["faithfulness"].size());
    for (size_t i = 0; i < ref["faithfulness"].size(); ++i) {
      EXPECT_EQ(got["faithfulness"][i]["edges_after_pruning"], ref["faithfulness"][i]["edges_after_pruning"]);
      // A circuit's rows sit elsewhere in the batched forward: equal to rounding.
      EXPECT_NEAR(got["faithfulness"][i]["faithfulness"].get<double>(),
                  ref["faithfulness"][i]["faithfulness"].get<double>(), 1e-5) << tag << " k index " << i;
    }
    auto names = [](const json& edges) {
      std::vector<std::string> v;
      for (const auto& e : edges) v.push_back(e["upstream"].get<std::string>() + "->" + e["downstream"].get<std::string>());
      return v;
    };
    EXPECT_TRUE(names(got["circuit"]["edges"]) == names(ref["circuit"]["edges"])) << tag << ": the circuit's edges differ";
  }
}

TEST_F(Mpi, ResumeAfterKillEqualsUninterruptedRun) {
  const std::string args = "--pairs " + quote(many_pairs()) + " --batch 2 --hooks resid_pre,mlp_out";
  json ref = run(0, args, "ref");
  ASSERT_FALSE(ref.is_null());
  const std::string out = dir_ + "/killed";
  const std::string tag = "resume-" + std::to_string(::getpid());
  pid_t pid = spawn("PHI3_TEST_TAG=" + tag + " " + quote(PHI3_MPIEXEC) + " " + PHI3_MPIEXEC_FLAGS +
                        " -x PHI3_TEST_TAG -np 2 " + quote(PHI3_CLI) + " run --device cpu " + args + " --out " + quote(out),
                    dir_);
  ASSERT_TRUE(wait_for([&] { return checkpoints(out) >= 3; }, 120)) << slurp(dir_ + "/bg_err.txt");
  // The whole job, as a crashed node or a scheduler would: mpirun and every rank.
  ASSERT_EQ(::kill(-pid, SIGKILL), 0);
  for (pid_t q : pids_with_env("PHI3_TEST_TAG", tag)) ::kill(q, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(wait_for([&] { return pids_with_env("PHI3_TEST_TAG", tag).empty(); }, 30));
  const int finished = checkpoints(out);
  ASSERT_LT(finished, 24) << "the run finished before it was killed; nothing was resumed";
  EXPECT_FALSE(fs::exists(out + "/results.json"));
  for (const auto& e : fs::directory_iterator(out + "/checkpoints"))  // every checkpoint is whole
    if (is_checkpoint(e.path())) {
      EXPECT_NO_THROW(json::parse(slurp(e.path().string()))) << e.path();
    }

  // Without --resume: an error that says what to do.
  Result r = sh(command(0, "run --device cpu " + args + " --out " + quote(out)), dir_);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--resume"), std::string::npos) << r.err;
  // Other options than the checkpoints': the differing field is named.
  r = sh(command(0, "run --device cpu --pairs " + quote(many_pairs()) + " --batch 2 --hooks resid_pre --out " +
                        quote(out) + " --resume"),
         dir_);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("belongs to another run"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("hooks"), std::string::npos) << r.err;
  EXPECT_EQ(checkpoints(out), finished) << "a refused resume deletes nothing";

  // Resume with 3 ranks.
  r = sh(command(3, "run --device cpu " + args + " --out " + quote(out) + " --resume"), dir_);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming: " + std::to_string(finished) + " of 24 batches"), std::string::npos) << r.err;
  json got = json::parse(slurp(out + "/results.json"));
  expect_same_results(ref, got, "resumed");
  EXPECT_EQ(got["work"]["resumed_batches"], finished);
  EXPECT_EQ(checkpoints(out), 24);
  EXPECT_TRUE(temp_files(out).empty()) << "--resume removes the temp files of a killed write";
}

// The same, but the kill lands inside the write of a checkpoint every time: the writer pauses
// there (a test-only switch), so a half-written temp file is what the killed job leaves. A run
// without --resume names it; --resume (at another rank count) removes it and gives the
// uninterrupted run's results.
TEST_F(Mpi, ResumeAfterKillInsideAWrite) {
  const std::string args = "--pairs " + quote(many_pairs()) + " --batch 2 --hooks resid_pre,mlp_out";
  json ref = run(0, args, "ref");
  ASSERT_FALSE(ref.is_null());
  const std::string out = dir_ + "/killed";
  const std::string tag = "inwrite-" + std::to_string(::getpid());
  pid_t pid = spawn("PHI3_TEST_TAG=" + tag + " PHI3_TEST_PAUSE_IN_WRITE=batch-000003.json " + quote(PHI3_MPIEXEC) +
                        " " + PHI3_MPIEXEC_FLAGS + " -x PHI3_TEST_TAG -x PHI3_TEST_PAUSE_IN_WRITE -np 2 " +
                        quote(PHI3_CLI) + " run --device cpu " + args + " --out " + quote(out),
                    dir_);
  std::vector<std::string> temps;
  ASSERT_TRUE(wait_for(
      [&] {
        temps = temp_files(out);  // the paused write (other batches' temp files come and go)
        return temps.size() == 1 &&
               fs::path(temps[0]).filename().string().rfind("batch-000003.json.tmp.", 0) == 0 &&
               test::size_or_zero(temps[0]) > 0;
      },
      120))
      << slurp(dir_ + "/bg_err.txt");
  ASSERT_EQ(::kill(-pid, SIGKILL), 0);
  for (pid_t q : pids_with_env("PHI3_TEST_TAG", tag)) ::kill(q, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(wait_for([&] { return pids_with_env("PHI3_TEST_TAG", tag).empty(); }, 30));
  EXPECT_EQ(temp_files(out), temps) << "the half-written checkpoint stays a temp file";
  EXPECT_FALSE(fs::exists(out + "/checkpoints/batch-000003.json"));
  EXPECT_FALSE(fs::exists(out + "/results.json"));
  const int finished = checkpoints(out);
  for (const auto& e : fs::directory_iterator(out + "/checkpoints"))
    if (is_checkpoint(e.path())) {
      EXPECT_NO_THROW(json::parse(slurp(e.path().string()))) << e.path();
    }

  Result r = sh(command(0, "run --device cpu " + args + " --out " + quote(out)), dir_);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find(fs::path(temps[0]).filename().string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--resume"), std::string::npos) << r.err;

  r = sh(command(3, "run --device cpu " + args + " --out " + quote(out) + " --resume"), dir_);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("removed 1 temp files"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("resuming: " + std::to_string(finished) + " of 24 batches"), std::string::npos) << r.err;
  json got = json::parse(slurp(out + "/results.json"));
  expect_same_results(ref, got, "resumed after a kill inside a write");
  EXPECT_EQ(checkpoints(out), 24);
  EXPECT_TRUE(temp_files(out).empty());
}

// pids of the processes whose environment holds NAME=VALUE.
std::vector<pid_t> pids_with_env(const std::string& name, const std::string& value) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string n = e.path().filename().string();
    if (n.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream f(e.path() / "environ", std::ios::binary);
    std::string env((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::string comm = slurp((e.path() / "comm").string());
    if (comm.find("phi3patch") == std::string::npos) continue;
    if (env.find(name + "=" + value + '\0') != std::string::npos || env.find('\0' + name + "=" + value) != std::string::npos)
      out.push_back(static_cast<pid_t>(std::stoi(n)));
  }
  return out;
}

// A rank killed mid-sweep (SIGKILL) ends the whole job within 60 s: non-zero exit, no
// results.json, the finished checkpoints kept.
TEST_F(Mpi, KilledRankStopsTheJob) {
  const std::string out = dir_ + "/out";
  const std::string tag = std::to_string(::getpid());
  const std::string cmd = "PHI3_TEST_TAG=" + tag + " " + quote(PHI3_MPIEXEC) + " " + PHI3_MPIEXEC_FLAGS +
                          " -x PHI3_TEST_TAG -np 2 " + quote(PHI3_CLI) + " run --device cpu --pairs " +
                          quote(many_pairs()) + " --batch 2 --naive --out " + quote(out);
  pid_t pid = spawn(cmd, dir_);
  ASSERT_TRUE(wait_for([&] { return checkpoints(out) >= 1; }, 120)) << slurp(dir_ + "/bg_err.txt");
  pid_t victim = 0;
  ASSERT_TRUE(wait_for(
      [&] {
        auto p = pids_with_env("OMPI_COMM_WORLD_RANK", "1");
        for (pid_t q : p)
          if (!pids_with_env("PHI3_TEST_TAG", tag).empty()) {
            auto mine = pids_with_env("PHI3_TEST_TAG", tag);
            if (std::find(mine.begin(), mine.end(), q) != mine.end()) victim = q;
          }
        return victim != 0;
      },
      20));
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  const auto t0 = Clock::now();
  int status = 0;
  bool ended = wait_for([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, 60);
  if (!ended) ::kill(-pid, SIGKILL), ::waitpid(pid, &status, 0);
  ASSERT_TRUE(ended) << "mpirun still running 60 s after a rank was killed";
  std::printf("    mpirun returned %.1f s after rank 1 was killed\n",
              std::chrono::duration<double>(Clock::now() - t0).count());
  EXPECT_TRUE(!WIFEXITED(status) || WEXITSTATUS(status) != 0) << "exit status must be non-zero";
  EXPECT_FALSE(fs::exists(out + "/results.json"));
  EXPECT_GE(checkpoints(out), 1);
  for (const auto& e : fs::directory_iterator(out + "/checkpoints"))
    EXPECT_NO_THROW(json::parse(slurp(e.path().string()))) << e.path();
}

// Bad input that only one rank sees (its model copy is corrupt, as on a node with a broken
// file system): one error line from rank 0 naming rank 1 and the file, exit 2, no results.
TEST_F(Mpi, BadInputOnOneRankIsOneClearError) {
  const std::string bad = dir_ + "/bad-model";
  fs::create_directories(bad);
  for (const auto& e : fs::directory_iterator(model_dir())) fs::copy(e.path(), bad / e.path().filename());
  fs::resize_file(bad + "/model.safetensors", fs::file_size(bad + "/model.safetensors") / 2);
  const std::string out = dir_ + "/out";
  const std::string run = " run --device cpu --pairs " + quote(seed_pairs()) + " --out " + quote(out) + " --model ";
  Result r = sh(quote(PHI3_MPIEXEC) + " " + PHI3_MPIEXEC_FLAGS + " -np 1 " + quote(PHI3_CLI) + run + quote(model_dir()) +
                    " : -np 1 " + quote(PHI3_CLI) + run + quote(bad),
                dir_);
  EXPECT_EQ(r.code, 2) << r.err;
  std::vector<std::string> errors;
  std::istringstream ss(r.err);
  for (std::string line; std::getline(ss, line);)
    if (line.find("phi3patch: error:") != std::string::npos) errors.push_back(line);
  ASSERT_EQ(errors.size(), 1u) << r.err;
  EXPECT_NE(errors[0].find("rank 1 of 2"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("bad-model/model.safetensors"), std::string::npos) << errors[0];
  EXPECT_FALSE(fs::exists(out + "/results.json"));
}

}  // namespace
}  // namespace phi3
