// Times one forward (no pattern kept) and attribution patching (clean + corrupted in one
// forward_pair, one backward, AtP of resid_pre, attn_out, mlp_out) exactly as `phi3patch
// bench` does, N times each, printing the minimum, 10th percentile and median of the wall
// time and of the process CPU time. Not built by CMake: it is compiled against any commit's
// libphi3core.a, so two commits can be timed side by side with the same driver
// (bench/results/cpu-tiny-72af220-vs-head-2026-12-07.json):
//
//   g++ -O2 -std=c++17 -DNDEBUG -I$TREE -I/usr/include/x86_64-linux-gnu/openblas-pthread \
//       bench/phase_timer.cpp -o timer $TREE/build/libphi3core.a \
//       /usr/lib/x86_64-linux-gnu/libopenblas.so -lsentencepiece -lpcre2-8 -lutf8proc -lpthread
//   ./timer fwd|attr N $TREE          # 2 threads
//   OPENBLAS_NUM_THREADS=1 taskset -c 1 ./timer fwd|attr N $TREE   # 1 thread: load-robust
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include "model/backward.h"
#include "model/batch.h"
#include "model/forward.h"
#include "patching/attribution.h"
using namespace phi3;
int main(int argc, char** argv) {
  const std::string mode = argv[1];
  const int n = atoi(argv[2]);
  const std::string root = argv[3];
  auto be = make_cpu_backend();
  auto m = load_model(*be, root + "/data/models/tiny-temporal-phi3");
  auto pairs = load_pairs(root + "/data/temporal_scope_for_attribution_patching.json");
  PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings, 0, m->tok.bos_by_default());
  ForwardOptions no_pattern;
  no_pattern.keep_pattern = false;
  ForwardState clean = forward(*be, *m, pb.clean), corrupted = forward(*be, *m, pb.corrupted);
  LogitDiff lc = logit_diff(*be, *m, clean, pb.answer, pb.other), lr = logit_diff(*be, *m, corrupted, pb.answer, pb.other);
  const float scale = static_cast<float>(1.0 / (lc.mean - lr.mean));
  std::vector<double> t, c;
  auto cpu = [] { timespec ts; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6; };
  for (int i = 0; i < n; ++i) {
    const double c0 = cpu();
    auto t0 = std::chrono::steady_clock::now();
    if (mode == "fwd") {
      forward(*be, *m, pb.corrupted, no_pattern);
    } else {
      PairForward p = forward_pair(*be, *m, pb.clean, pb.corrupted);
      Gradients g = backward(*be, *m, p.corrupted, pb.answer, pb.other, scale);
      for (Hook h : {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut}) attribution(*be, *m, p.corrupted, p.clean, g, h);
    }
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
    c.push_back(cpu() - c0);
  }
  std::sort(t.begin(), t.end());
  std::sort(c.begin(), c.end());
  std::printf("%s wall min %.3f p10 %.3f median %.3f ms | cpu min %.3f median %.3f ms\n", mode.c_str(), t[0], t[t.size() / 10],
              t[t.size() / 2], c[0], c[c.size() / 2]);
}
