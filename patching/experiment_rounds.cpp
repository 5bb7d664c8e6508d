// The batch loop of one phase of run: finished batches from checkpoints, then rounds that deal
// batches to the ranks, split each round's units by cost, and merge, checkpoint and report
// progress on rank 0.
#include <cmath>
#include <cstdio>

#include "patching/checkpoint.h"
#include "patching/experiment_job.h"

namespace phi3 {

namespace {
std::string fmt_seconds(double s) {
  char buf[32];
  if (s < 90) std::snprintf(buf, sizeof buf, "%.0f s", s);
  else if (s < 5400) std::snprintf(buf, sizeof buf, "%.0f min %02.0f s", std::floor(s / 60), std::fmod(s, 60));
  else std::snprintf(buf, sizeof buf, "%.1f h", s / 3600);
  return buf;
}
}  // namespace

namespace experiment_detail {

// Computes every batch of one phase of the job (on every rank), resuming from the
// checkpoints in ckpt when asked; the results are complete in `done` on rank 0. Returns the
// number of batches taken from checkpoints.
int run_batches(Job& job, Comm& comm, CheckpointDir* ckpt, const nlohmann::json& fp, std::map<int, BatchResult>& done,
                RankWork& rw, int& code) {
  const ExperimentOptions& opt = job.opt;
  const int N = comm.size(), rank = comm.rank();
  // ---- finished batches (rank 0 reads the checkpoints, every rank learns which) -------------
  std::string finished;
  agree_attempt(comm, job, code, [&] {
    if (!comm.root() || !ckpt) return;
    if (opt.resume) done = ckpt->load(fp);
    else ckpt->clear();
    nlohmann::json list = nlohmann::json::array();
    for (const auto& [bi, r] : done) {
      if (bi >= job.n_batches) throw Error("checkpoint of batch " + std::to_string(bi) + " is outside this run");
      list.push_back(bi);
    }
    finished = list.dump();
  });
  std::vector<char> is_done(job.n_batches, 0);
  if (ckpt) {
    for (const auto& v : nlohmann::json::parse(comm.bcast(comm.root() ? finished : std::string())))
      is_done[v.get<int>()] = 1;
  }
  std::vector<int> todo;
  for (int b = 0; b < job.n_batches; ++b)
    if (!is_done[b]) todo.push_back(b);
  const int resumed = job.n_batches - static_cast<int>(todo.size());
  if (resumed > 0)
    job.log("resuming: " + std::to_string(resumed) + " of " + std::to_string(job.n_batches) +
            " batches are finished in " + ckpt->dir());

  // ---- rounds: N batches (one per rank), then the rest one at a time, split across ranks ----
  const auto t_compute = Clock::now();
  int64_t runs_done = 0;
  int batches_done = 0;
  int64_t targets_per_batch = 0;
  for (int64_t n : job.n_targets) targets_per_batch += n;
  auto finish_round = [&](const std::vector<std::string>& payloads, const std::vector<int>& batches) {
    // rank 0: merge, checkpoint, report progress
    if (!comm.root()) return;
    std::map<int, std::vector<BatchResult>> pieces;
    for (const auto& s : payloads) {
      if (s.empty()) continue;
      for (const auto& j : nlohmann::json::parse(s)) {
        BatchResult r = batch_result_from_json(j);
        pieces[r.batch].push_back(std::move(r));
      }
    }
    for (int bi : batches) {
      BatchResult merged = merge_parts(std::move(pieces[bi]), static_cast<int>(job.accs.size()), job.n_targets,
                                       job.rows(bi));
      for (const auto& p : merged.parts) runs_done += p.work.patched_runs;
      if (ckpt) ckpt->save(fp, merged);
      done[bi] = std::move(merged);
      ++batches_done;
    }
    const double el = since(t_compute);
    const int left = static_cast<int>(todo.size()) - batches_done;
    job.log("batches " + std::to_string(resumed + batches_done) + "/" + std::to_string(job.n_batches) +
            ", patch targets " + std::to_string(int64_t(resumed + batches_done) * targets_per_batch) + "/" +
            std::to_string(int64_t(job.n_batches) * targets_per_batch) + ", " + std::to_string(runs_done) +
            " patched runs, " + std::to_string(static_cast<int64_t>(runs_done / std::max(el, 1e-9))) + " runs/s" +
            (left > 0 ? ", ETA " + fmt_seconds(el / batches_done * left) : std::string()));
  };

  // Each round deals min(N, left) batches to the ranks (rank r forwards batch r mod k and
  // prices its units), then cuts the round's units (batch after batch) into N contiguous
  // pieces of equal cost: a rank computes the parts of the one or two batches its piece
  // covers. So a dataset's batches are spread over the ranks, and one small batch (the seed's)
  // is still split across all of them. With one rank: whole batches, nothing priced.
  size_t next = 0;
  while (next < todo.size()) {
    const int k = static_cast<int>(std::min<size_t>(N, todo.size() - next));
    const std::vector<int> batches(todo.begin() + next, todo.begin() + next + k);
    next += k;
    Forwards own;  // this rank's dealt batch
    const int own_j = rank % k;
    std::string price;
    agree_attempt(comm, job, code, [&] {
      own = run_forwards(job, batches[own_j], rw);
      if (N > 1 && rank < k) price = nlohmann::json(batch_units(job, own)).dump();
    });
    // The round's units, batch by batch, and this rank's contiguous piece of them.
    std::vector<int64_t> units;
    std::vector<int64_t> start(k + 1, 0);
    if (N > 1) {
      const std::vector<std::string> prices = comm.allgather(price);
      for (int j = 0; j < k; ++j) {
        const std::vector<int64_t> u = nlohmann::json::parse(prices[j]).get<std::vector<int64_t>>();
        units.insert(units.end(), u.begin(), u.end());
        start[j + 1] = static_cast<int64_t>(units.size());
      }
    }
    const Range piece = N > 1 ? split_by_cost(units, N)[rank] : Range{0, 1};
    std::string payload;
    agree_attempt(comm, job, code, [&] {
      nlohmann::json out = nlohmann::json::array();
      for (int j = 0; j < k; ++j) {
        Share share;
        bool summary = true;
        if (N == 1) {
          share = whole_share(job);
        } else {
          const int64_t lo = std::max(piece.begin, start[j]), hi = std::min(piece.end, start[j + 1]);
          if (lo >= hi) continue;
          share = share_of(job, {lo - start[j], hi - start[j]});
          summary = lo == start[j];  // the rank holding a batch's first unit sends its summary
        }
        Forwards other;
        const Forwards& f = j == own_j ? own : (other = run_forwards(job, batches[j], rw));
        BatchResult r = compute_share(job, batches[j], f, share, rw);
        r.has_summary = summary;
        ++rw.batches;
        out.push_back(to_json(r));
      }
      payload = out.dump();
    });
    own = Forwards{};
    finish_round(comm.gather(payload), batches);
  }
  return resumed;
}

}  // namespace experiment_detail
}  // namespace phi3
