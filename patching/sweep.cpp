#include "patching/sweep.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <atomic>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "model/moe.h"
#include "model/qk_norm.h"
#include "patching/copy_slices.h"
#include "runtime/arena.h"
#include "runtime/error.h"

namespace phi3 {

std::vector<PatchSpec> sweep_targets(Hook hook, int L, int T, int H) {
  std::vector<PatchSpec> t;
  for (int l = 0; l < L; ++l) {
    if (hook_all_pos(hook)) {
      for (int h = 0; h < H; ++h) t.push_back({hook, l, -1, h});
    } else if (hook_is_per_head(hook)) {
      for (int p = 0; p < T; ++p)
        for (int h = 0; h < H; ++h) t.push_back({hook, l, p, h});
    } else {
      for (int p = 0; p < T; ++p) t.push_back({hook, l, p, -1});
    }
  }
  return t;
}

namespace {

using Clock = std::chrono::steady_clock;


// Which patches write the value already there: for every layer, position and group (a
// head for per-head hooks, the whole row otherwise), whether base and source hold the same
// bits in every batch row. Computed on the device (rows_equal), one small download.
struct NoopMask {
  std::vector<uint8_t> eq;  // [L, T, G]
  int T = 0, G = 1;
  bool equal(int l, int pos, int g) const { return eq[(size_t(l) * T + pos) * G + g] != 0; }
};

// One patched run of the fast sweep.
struct Run {
  int target = 0;
  int start = 0;         // first full layer computed (L: none)
  int p = 0;             // first recomputed position
  bool tail = false;     // hook after attention at layer start-1
  int tail_from = 0;     // tail rows: positions [tail_from, tail_to) of layer start-1
  int tail_to = 0;
  bool qkv = false;      // q/k/v patch: the tail recomputes layer start-1's attention for
                         // positions [p, T), also when start-1 is the last layer
};

class FastSweep {
 public:
  FastSweep(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source,
            const MetricSpec& metric, Hook hook)
      : be_(be), m_(m), c_(m.cfg), base_(base), src_(source), metric_(metric), answer_(metric.answer),
        other_(metric.other), hook_(hook) {
    B_ = base.B;
    T_ = base.T;
    L_ = c_.num_hidden_layers;
    D_ = c_.hidden_size;
    F_ = c_.intermediate_size;
    V_ = c_.vocab_size;
    H_ = c_.num_attention_heads;
    KVH_ = c_.num_key_value_heads;
    HD_ = c_.head_dim;
    QW_ = m.q_width();
    KVW_ = m.kv_width();
    QKVW_ = m.qkv_width();
    g16_ = be.gemm_in_bf16();
  }

  // Device bytes a run needs in a chunk (work buffers per packed row + its final rows).
  size_t run_bytes(const Run& r) const {
    // The run's share of its chunk's arena, plus the index arrays (row, position, segments).
    const int64_t rows = int64_t(B_) * (T_ - r.p);
    return chunk_plan(rows, B_).bytes() + size_t(rows) * 2 * sizeof(int32_t) + 2 * B_ * sizeof(AttnSegment);
  }

  // Computes the per-row metric of `runs` (sorted by start layer) into ld.
  void run_chunk(const std::vector<Run>& runs, std::vector<float>& ld, int64_t& token_layer_evals) {
    const int n = static_cast<int>(runs.size());
    if (n == 0) return;
    // ---- packed layout -------------------------------------------------------------
    std::vector<int64_t> off(n + 1, 0);
    for (int r = 0; r < n; ++r) off[r + 1] = off[r] + int64_t(B_) * (T_ - runs[r].p);
    const int64_t R = off[n];
    std::vector<int32_t> row_src(R), row_pos(R), last_row(size_t(n) * B_);
    for (int r = 0; r < n; ++r)
      for (int b = 0; b < B_; ++b)
        for (int t = runs[r].p; t < T_; ++t) {
          int64_t row = off[r] + int64_t(b) * (T_ - runs[r].p) + (t - runs[r].p);
          row_src[row] = b * T_ + t;
          row_pos[row] = base_.batch.pos[b * T_ + t];
          if (t == T_ - 1) last_row[size_t(r) * B_ + b] = static_cast<int32_t>(row);
        }
    std::vector<AttnSegment> segs, last_segs;
    for (int r = 0; r < n; ++r)
      for (int b = 0; b < B_; ++b) {
        int32_t kv_row = static_cast<int32_t>(off[r] + int64_t(b) * (T_ - runs[r].p));
        segs.push_back({b, runs[r].p, kv_row, runs[r].p, kv_row});
        last_segs.push_back({b, runs[r].p, kv_row, T_ - 1, r * B_ + b});
      }
    auto d_row_src = to_device(be_, row_src);
    auto d_row_pos = to_device(be_, row_pos);
    auto d_last_row = to_device(be_, last_row);
    auto d_segs = to_device(be_, segs);
    auto d_last_segs = to_device(be_, last_segs);

    const int NF = n * B_;  // final rows: run r, batch row b at r*B+b
    Arena arena(be_, chunk_plan(R, NF).bytes(),
                "sweep chunk of " + std::to_string(n) + " runs (" + std::to_string(R) + " rows)");
    X_ = arena.take<float>(size_t(R) * D_);
    ln_ = arena.take_gemm_in(g16_, ln32_, ln16_, size_t(R) * D_);
    rstd_ = arena.take<float>(R);
    qkv_ = arena.take<float>(size_t(R) * QKVW_);
    q_ = arena.take<float>(size_t(R) * QW_);
    k_ = arena.take<float>(size_t(R) * KVW_);
    v_ = arena.take<float>(size_t(R) * KVW_);
    z_ = arena.take<float>(size_t(R) * QW_);
    if (g16_) z16_ = arena.take<uint16_t>(size_t(R) * QW_);
    gu_ = arena.take<float>(size_t(R) * m_.gate_up_width());
    act_ = arena.take_gemm_in(g16_, act32_, act16_, size_t(R) * F_);
    DeviceArray<float> Xf = arena.take<float>(size_t(NF) * D_);
    DeviceArray<float> q_last = arena.take<float>(size_t(NF) * QW_);

    int first_active_end = 0;  // runs [0, active) have start <= l
    for (int l = 0; l <= L_; ++l) {
      // ---- runs joining at layer l: state = base resid_pre[l] rows, then patched rows ----
      int join_begin = first_active_end;
      while (first_active_end < n && runs[first_active_end].start == l) ++first_active_end;
      if (first_active_end > join_begin) join(runs, join_begin, first_active_end, l, off, row_src, Xf, token_layer_evals);
      if (l == L_) break;
      const int active = first_active_end;
      if (active == 0) continue;
      const int Rl = static_cast<int>(off[active]);
      const LayerWeights& w = m_.w.layers[l];
      const LayerActs& bl = base_.layers[l];
      token_layer_evals += Rl;

      be_.rmsnorm_forward(ln_, rstd_.get(), X_.get(), w.ln1, Rl, D_, c_.rms_norm_eps, c_.norm_layer, w.ln1_b);
      be_.linear_forward(qkv_.get(), ln_, w.qkv, Rl, false);
      be_.rotary_qkv_forward(q_.get(), k_.get(), v_.get(), qk_norm_input(be_, m_, l, qkv_.get(), Rl, qkn_),
                             d_row_pos.get(), Rl, H_, KVH_, HD_, base_.layer_rope(c_, l));

      AttnParams ap = packed_attention(l, bl, nullptr, active * B_);

      if (l < L_ - 1) {
        ap.segs = d_segs.get();
        be_.attention_forward(ap);
        add_output(X_.get(), GemmIn(z_.get(), z16_.get()), w.o, w.post_attn, Rl);  // resid_mid
        mlp_block(w, X_.get(), Rl);                                                  // resid_post
      } else {
        // Last layer: only the final position of each run goes past attention.
        const int Nf = active * B_;
        // Queries at T-1 gathered to rows r*B+b (the layout of the z and final rows).
        be_.copy_rows(q_last.get(), QW_, nullptr, q_.get(), QW_, d_last_row.get(), Nf, QW_);
        ap.q = q_last.get();
        ap.segs = d_last_segs.get();
        be_.attention_forward(ap);  // z rows r*B+b
        be_.copy_rows(Xf.get(), D_, nullptr, X_.get(), D_, d_last_row.get(), Nf, D_);
        add_output(Xf.get(), GemmIn(z_.get(), z16_.get()), w.o, w.post_attn, Nf);  // resid_mid at T-1
        mlp_block(w, Xf.get(), Nf);
      }
    }
    // ---- logits and metric of every final row ------------------------------------------
    DeviceArray<float> lnf32, rstdf = arena.take<float>(NF);
    DeviceArray<uint16_t> lnf16;
    const GemmOut lnf = arena.take_gemm_in(g16_, lnf32, lnf16, size_t(NF) * D_);
    DeviceArray<float> logits = arena.take<float>(size_t(NF) * V_);
    be_.rmsnorm_forward(lnf, rstdf.get(), Xf.get(), m_.w.final_norm, NF, D_, c_.rms_norm_eps, c_.norm_layer, m_.w.final_norm_b);
    be_.linear_forward(logits.get(), lnf, m_.w.lm_head, NF, false);
    if (c_.final_softcap > 0) be_.softcap_forward(logits.get(), int64_t(NF) * V_, c_.final_softcap);
    DeviceArray<float> d_ld(be_, NF);
    if (metric_.kind == MetricKind::LogitDiff) {
      std::vector<int32_t> ans(NF), oth(NF);
      for (int r = 0; r < n; ++r)
        for (int b = 0; b < B_; ++b) {
          ans[r * B_ + b] = answer_[b];
          oth[r * B_ + b] = other_[b];
        }
      auto d_ans = to_device(be_, ans), d_oth = to_device(be_, oth);
      be_.logit_diff_forward(d_ld.get(), logits.get(), V_, d_ans.get(), d_oth.get(), NF);
    } else {  // answer/other (kl: the reference row) of batch row b repeated for every run
      const DeviceMetric dm = metric_to_device(be_, metric_, V_, n);
      be_.metric_forward(d_ld.get(), logits.get(), dm.params);
    }
    std::vector<float> h_ld = d_ld.download();
    for (int r = 0; r < n; ++r)
      for (int b = 0; b < B_; ++b) ld[size_t(runs[r].target) * B_ + b] = h_ld[size_t(r) * B_ + b];
    for (auto* buf : {&X_, &ln32_, &rstd_, &qkv_, &q_, &k_, &v_, &z_, &gu_, &act32_, &qkn_}) buf->reset();
    for (auto* buf : {&ln16_, &z16_, &act16_}) buf->reset();
  }

  // The arena of a chunk with R packed rows and NF final rows (the buffers of run_chunk).
  ArenaPlan chunk_plan(int64_t R, int64_t NF) const {
    ArenaPlan p;
    auto gemm_in = [&](int64_t n) { p.add_gemm_in(g16_, n); };
    p.add<float>(R * D_);
    gemm_in(R * D_);
    p.add<float>(R).add<float>(R * QKVW_).add<float>(R * QW_);
    p.add<float>(R * KVW_).add<float>(R * KVW_).add<float>(R * QW_);
    if (g16_) p.add<uint16_t>(R * QW_);
    p.add<float>(R * (c_.mlp_gated ? 2 : 1) * F_);
    gemm_in(R * F_);
    p.add<float>(NF * D_).add<float>(NF * QW_);
    gemm_in(NF * D_);
    p.add<float>(NF).add<float>(NF * V_);
    return p;
  }

 private:
  // Attention over the chunk's packed q/k/v rows (z into its z buffers), keys and values of
  // positions before each segment's fresh_start from the base run's cache of layer `bl`.
  AttnParams packed_attention(int l, const LayerActs& bl, const AttnSegment* segs, int n_segs) const {
    AttnParams ap = attention_params(m_, T_, l);
    ap.q = q_.get();
    ap.k = k_.get();
    ap.v = v_.get();
    ap.k_cache = bl.k_rot.get();
    ap.v_cache = bl.v.get();
    ap.z = z_.get();
    ap.z16 = z16_.get();
    ap.tensor_cores = g16_;  // bf16 mode: attention on tensor cores
    ap.pad = base_.pad.get();
    ap.segs = segs;
    ap.n_segs = n_segs;
    return ap;
  }

  // x [rows, D] = resid_mid rows -> x += down(swiglu(gate_up(rmsnorm(x)))), the residual add
  // done by the down projection's GEMM (accumulate).
  void mlp_block(const LayerWeights& w, float* x, int rows) {
    if (c_.moe()) {  // the MoE block (model/moe.h): each patched run routed afresh
      const int l = static_cast<int>(&w - m_.w.layers.data());
      if (moe_ln_.size() < size_t(rows) * D_) {
        moe_ln_ = DeviceArray<float>(be_, size_t(rows) * D_);
        moe_out_ = DeviceArray<float>(be_, size_t(rows) * D_);
      }
      be_.rmsnorm_forward(moe_ln_.get(), rstd_.get(), x, w.ln2, rows, D_, c_.rms_norm_eps, c_.norm_layer, w.ln2_b);
      std::function<void(float*)> patch;
      if (router_override_)  // the router hook's patched rows: every row's logits from the source
        patch = [&](float* logits) {
          be_.copy(logits, router_override_, size_t(rows) * c_.num_experts * sizeof(float));
        };
      moe_forward(be_, m_, l, moe_ln_.get(), moe_out_.get(), rows, moe_, patch);
      be_.add(x, x, moe_out_.get(), int64_t(rows) * D_);
      return;
    }
    be_.rmsnorm_forward(ln_, rstd_.get(), x, w.ln2, rows, D_, c_.rms_norm_eps, c_.norm_layer, w.ln2_b);
    be_.linear_forward(gu_.get(), ln_, w.gate_up, rows, false);
    be_.swiglu_forward(act_, gu_.get(), rows, F_, mlp_act(c_));
    add_output(x, act_, w.down, w.post_mlp, rows);
  }

  // x += a block's output: W's projection of `in`, accumulated by the GEMM itself, or through
  // the block's post-norm (Gemma 2: RMSNorm(W in) added) where the model has one.
  void add_output(float* x, GemmIn in, const Weight& W, const float* post_w, int rows) {
    if (!c_.post_norms) {
      be_.linear_forward(x, in, W, rows, true);
      return;
    }
    if (post_raw_.size() < size_t(rows) * D_) {
      post_raw_ = DeviceArray<float>(be_, size_t(rows) * D_);
      post_out_ = DeviceArray<float>(be_, size_t(rows) * D_);
      post_rstd_ = DeviceArray<float>(be_, size_t(rows));
    }
    be_.linear_forward(post_raw_.get(), in, W, rows, false);
    be_.rmsnorm_forward(post_out_.get(), post_rstd_.get(), post_raw_.get(), post_w, rows, D_, c_.rms_norm_eps);
    be_.add(x, x, post_out_.get(), int64_t(rows) * D_);
  }

  // Initialises the state rows of runs [r0, r1) (all with start == l).
  void join(const std::vector<Run>& runs, int r0, int r1, int l, const std::vector<int64_t>& off,
            const std::vector<int32_t>& row_src, DeviceArray<float>& Xf, int64_t& evals) {
    if (l < L_ && !hook_is_qkv(hook_)) {  // (a q/k/v tail writes all its runs' state rows)
      // State rows start as the base run's resid_pre[l] (= resid_post[l-1]).
      const int64_t row0 = off[r0], nrows = off[r1] - off[r0];
      std::vector<int32_t> dst(nrows), src(nrows);
      for (int64_t i = 0; i < nrows; ++i) {
        dst[i] = static_cast<int32_t>(row0 + i);
        src[i] = row_src[row0 + i];
      }
      auto d_dst = to_device(be_, dst), d_src = to_device(be_, src);
      be_.copy_rows(X_.get(), D_, d_dst.get(), base_.layers[l].resid_pre.get(), D_, d_src.get(),
                    static_cast<int>(nrows), D_);
    }
    // Patched rows.
    std::vector<int32_t> pre_dst, pre_src;  // resid_pre patches (l == hook layer)
    std::vector<TailRow> tail;
    if (hook_is_qkv(hook_)) {  // every run of a q/k/v sweep has a tail
      evals += compute_qkv_tail(runs, r0, r1, l - 1, off, l < L_ ? X_.get() : Xf.get(), l == L_);
      return;
    }
    for (int r = r0; r < r1; ++r) {
      const Run& run = runs[r];
      for (int b = 0; b < B_; ++b) {
        if (!run.tail) {
          pre_dst.push_back(static_cast<int32_t>(off[r] + int64_t(b) * (T_ - run.p)));
          pre_src.push_back(b * T_ + run.p);
          continue;
        }
        for (int t = run.tail_from; t < run.tail_to; ++t) {
          int32_t dst;
          if (l < L_) {
            dst = static_cast<int32_t>(off[r] + int64_t(b) * (T_ - run.p) + (t - run.p));
          } else {
            if (t != T_ - 1) continue;  // only the final position reaches the logits
            dst = r * B_ + b;
          }
          tail.push_back({dst, b * T_ + t, r});
        }
      }
    }
    if (!pre_dst.empty()) {
      auto d_dst = to_device(be_, pre_dst), d_src = to_device(be_, pre_src);
      be_.copy_rows(X_.get(), D_, d_dst.get(), src_.layers[l].resid_pre.get(), D_, d_src.get(),
                    static_cast<int>(pre_dst.size()), D_);
    }
    if (!tail.empty()) {
      evals += static_cast<int64_t>(tail.size());
      compute_tail(runs, l - 1, tail, l < L_ ? X_.get() : Xf.get());
    }
  }

  struct TailRow {
    int32_t dst;   // destination row (state, or final rows at the last layer)
    int32_t src;   // b*T + t in the base/source caches
    int run;       // index into runs
  };

  // Per head: the rows to patch (destination row, source row b*T+t).
  // dst[row, h*HD .. (h+1)*HD) = src[source row, same] for every head's rows (rows `stride` apart).
  void copy_head_slices(float* dst, const float* src, int64_t stride, const ColumnRows& by_head) {
    ColumnRows by_col;
    for (const auto& [h, idx] : by_head) by_col[h * int64_t(HD_)] = idx;
    copy_column_slices(be_, dst, stride, src, stride, HD_, by_col);
  }

  // Layer lt for runs [r0, r1) of a q/k/v sweep, positions [p, T) of each: the base run's
  // pre-rotary qkv rows with the patched head's slice from the source run (at p, or at every
  // position for the all-position hooks), rotary and split, attention over those rows with
  // the base run's key/value cache for positions < p, then o_proj and the MLP. Rows are
  // packed like the chunk's state rows of these runs (off[r0] onwards), so they land in
  // dst_buf at the same offsets; at the end (final) only position T-1 of each run and batch
  // row goes to the final rows r*B+b. Uses the chunk's qkv/q/k/v/z and MLP work buffers
  // (free between layers). Returns the token rows computed.
  int64_t compute_qkv_tail(const std::vector<Run>& runs, int r0, int r1, int lt, const std::vector<int64_t>& off,
                           float* dst_buf, bool final) {
    const LayerActs& bl = base_.layers[lt];
    const LayerWeights& w = m_.w.layers[lt];
    const Hook hb = hook_base(hook_);
    const int col0 = hb == Hook::Q ? 0 : hb == Hook::K ? QW_ : QW_ + KVW_;
    const int64_t row0 = off[r0], n = off[r1] - off[r0];
    std::vector<int32_t> src(n), pos(n), dst;
    ColumnRows by_head;  // rows patched per head
    std::vector<AttnSegment> segs;
    std::vector<int32_t> final_row, final_src, final_dst;  // packed row, b*T+T-1, final row
    for (int r = r0; r < r1; ++r) {
      const Run& run = runs[r];
      const int head = tspec_[run.target].head;
      for (int b = 0; b < B_; ++b) {
        const int32_t first = static_cast<int32_t>(off[r] - row0 + int64_t(b) * (T_ - run.p));
        segs.push_back({b, run.p, first, run.p, first});
        for (int t = run.p; t < T_; ++t) {
          const int32_t i = first + (t - run.p);
          src[i] = b * T_ + t;
          pos[i] = base_.batch.pos[b * T_ + t];
          if (hook_all_pos(hook_) || t == run.p) {
            by_head[head].first.push_back(i);
            by_head[head].second.push_back(b * T_ + t);
          }
          if (final && t == T_ - 1) {
            final_row.push_back(i);
            final_src.push_back(b * T_ + t);
            final_dst.push_back(r * B_ + b);
          }
        }
      }
    }
    auto d_src = to_device(be_, src), d_pos = to_device(be_, pos);
    auto d_segs = to_device(be_, segs);
    be_.copy_rows(qkv_.get(), QKVW_, nullptr, bl.qkv.get(), QKVW_, d_src.get(), static_cast<int>(n), QKVW_);
    copy_head_slices(qkv_.get() + col0, src_.layers[lt].qkv.get() + col0, QKVW_, by_head);
    be_.rotary_qkv_forward(q_.get(), k_.get(), v_.get(), qk_norm_input(be_, m_, lt, qkv_.get(), static_cast<int>(n), qkn_),
                           d_pos.get(), static_cast<int>(n), H_, KVH_, HD_, base_.layer_rope(c_, lt));
    be_.attention_forward(packed_attention(lt, bl, d_segs.get(), static_cast<int>(segs.size())));
    if (!final) {  // resid_mid, then resid_post, straight into the runs' state rows
      float* post = dst_buf + row0 * D_;
      be_.copy_rows(post, D_, nullptr, bl.resid_pre.get(), D_, d_src.get(), static_cast<int>(n), D_);
      add_output(post, GemmIn(z_.get(), z16_.get()), w.o, w.post_attn, static_cast<int>(n));
      mlp_block(w, post, static_cast<int>(n));
      return n;
    }
    // At the end only position T-1 of each run and batch row reaches the logits: o_proj and
    // the MLP for those rows alone (their z gathered into the free q buffer), into the final rows.
    const int nf = static_cast<int>(final_row.size());
    auto d_fr = to_device(be_, final_row), d_fs = to_device(be_, final_src), d_fd = to_device(be_, final_dst);
    be_.copy_rows(q_.get(), QW_, nullptr, z_.get(), QW_, d_fr.get(), nf, QW_);
    DeviceArray<float> post(be_, size_t(nf) * D_);
    be_.copy_rows(post.get(), D_, nullptr, bl.resid_pre.get(), D_, d_fs.get(), nf, D_);
    add_output(post.get(), q_.get(), w.o, w.post_attn, nf);
    mlp_block(w, post.get(), nf);
    be_.copy_rows(dst_buf, D_, d_fd.get(), post.get(), D_, nullptr, nf, D_);
    return n;
  }

  // The rest of layer lt for patched rows: hook value from the source run, everything else
  // from the base run's caches; writes resid_post rows into dst_buf.
  void compute_tail(const std::vector<Run>& runs, int lt, const std::vector<TailRow>& rows, float* dst_buf) {
    const LayerActs& bl = base_.layers[lt];
    const LayerActs& sl = src_.layers[lt];
    const LayerWeights& w = m_.w.layers[lt];
    const int n = static_cast<int>(rows.size());
    std::vector<int32_t> src(n), dst(n);
    for (int i = 0; i < n; ++i) {
      src[i] = rows[i].src;
      dst[i] = rows[i].dst;
    }
    auto d_src = to_device(be_, src), d_dst = to_device(be_, dst);
    // `post` ends as resid_post of the rows (resid_mid first, where the MLP runs).
    DeviceArray<float> post(be_, size_t(n) * D_);
    if (hook_ == Hook::ResidPost) {
      be_.copy_rows(post.get(), D_, nullptr, src_.resid_post(lt), D_, d_src.get(), n, D_);
    } else if (hook_ == Hook::MlpPost) {
      // The base run's neurons of each row with one from the source (a width-1 column slice),
      // then down_proj added onto the base resid_mid.
      DeviceArray<float> act(be_, size_t(n) * F_);
      be_.copy_rows(act.get(), F_, nullptr, bl.act.get(), F_, d_src.get(), n, F_);
      ColumnRows by_neuron;  // row i of `act` takes its run's neuron from source row rows[i].src
      for (int i = 0; i < n; ++i) {
        auto& e = by_neuron[tspec_[runs[rows[i].run].target].head];
        e.first.push_back(i);
        e.second.push_back(rows[i].src);
      }
      copy_column_slices(be_, act.get(), F_, sl.act.get(), F_, 1, by_neuron);
      be_.copy_rows(post.get(), D_, nullptr, bl.resid_mid.get(), D_, d_src.get(), n, D_);
      add_output(post.get(), act.get(), w.down, w.post_mlp, n);
    } else if (hook_ == Hook::Router) {
      // The base resid_mid of each row through the MoE block with the source run's router
      // logits: the routing and gates follow the patched logits.
      DeviceArray<float> logits(be_, size_t(n) * c_.num_experts);
      be_.copy_rows(logits.get(), c_.num_experts, nullptr, sl.moe.router.get(), c_.num_experts, d_src.get(), n,
                    c_.num_experts);
      be_.copy_rows(post.get(), D_, nullptr, bl.resid_mid.get(), D_, d_src.get(), n, D_);
      router_override_ = logits.get();
      mlp_block(w, post.get(), n);
      router_override_ = nullptr;
    } else if (hook_ == Hook::MlpOut) {
      DeviceArray<float> mid(be_, size_t(n) * D_), tmp(be_, size_t(n) * D_);
      be_.copy_rows(mid.get(), D_, nullptr, bl.resid_mid.get(), D_, d_src.get(), n, D_);
      be_.copy_rows(tmp.get(), D_, nullptr, sl.mlp_out.get(), D_, d_src.get(), n, D_);
      be_.add(post.get(), mid.get(), tmp.get(), int64_t(n) * D_);
    } else {
      if (hook_ == Hook::ResidMid) {
        be_.copy_rows(post.get(), D_, nullptr, sl.resid_mid.get(), D_, d_src.get(), n, D_);
      } else {
        be_.copy_rows(post.get(), D_, nullptr, bl.resid_pre.get(), D_, d_src.get(), n, D_);
        if (hook_ == Hook::AttnOut) {
          DeviceArray<float> tmp(be_, size_t(n) * D_);
          be_.copy_rows(tmp.get(), D_, nullptr, sl.attn_out.get(), D_, d_src.get(), n, D_);
          be_.add(post.get(), post.get(), tmp.get(), int64_t(n) * D_);
        } else {  // Z / ZAllPos / pattern: base z with one head's slice from the source (for a
                  // pattern, z from the source pattern row(s): zp_), then o_proj
          DeviceArray<float> z(be_, size_t(n) * QW_);
          be_.copy_rows(z.get(), QW_, nullptr, bl.z.get(), QW_, d_src.get(), n, QW_);
          ColumnRows by_head;
          for (int i = 0; i < n; ++i) {
            auto& e = by_head[tspec_[runs[rows[i].run].target].head];
            e.first.push_back(i);
            e.second.push_back(rows[i].src);
          }
          copy_head_slices(z.get(), zp_ ? zp_[lt] : sl.z.get(), QW_, by_head);
          add_output(post.get(), z.get(), w.o, w.post_attn, n);  // the patched z, rounded by the GEMM
        }
      }
      // MLP of the patched rows in the chunk's work buffers (n <= the chunk's rows).
      mlp_block(w, post.get(), n);
    }
    be_.copy_rows(dst_buf, D_, d_dst.get(), post.get(), D_, nullptr, n, D_);
  }

 public:
  std::vector<PatchSpec> tspec_;
  // Pattern sweeps: per layer, [B*T, H*HD] z of every head from the source run's pattern over the
  // base run's values (attn_apply_pattern), the "source z" of a pattern patch.
  const float* const* zp_ = nullptr;

 private:
  Backend& be_;
  const Model& m_;
  const ModelConfig& c_;
  const ForwardState& base_;
  const ForwardState& src_;
  const MetricSpec& metric_;
  const std::vector<int32_t>& answer_;
  const std::vector<int32_t>& other_;
  Hook hook_;
  int B_, T_, L_, D_, F_, V_, H_, KVH_, HD_, QW_, KVW_, QKVW_;
  bool g16_ = false;  // GEMM inputs in bf16 (bf16 weights)
  DeviceArray<float> X_, ln32_, rstd_, qkv_, q_, k_, v_, z_, gu_, act32_;
  DeviceArray<float> qkn_;  // q and k normalized per head (models with q/k norm only)
  DeviceArray<float> post_raw_, post_out_, post_rstd_;  // add_output's work rows (post-norm models only)
  DeviceArray<uint16_t> ln16_, z16_, act16_;
  DeviceArray<float> moe_ln_, moe_out_;  // MoE models: the block's fp32 input and output rows
  MoeActs moe_;
  const float* router_override_ = nullptr;  // (router hook) the logits the next mlp_block uses
  GemmOut ln_, act_;  // ln32_/ln16_ and act32_/act16_, whichever is in use
};

NoopMask noop_mask(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source, Hook hook) {
  const int L = m.cfg.num_hidden_layers, B = base.B, T = base.T;
  NoopMask mask;
  mask.T = T;
  mask.G = hook_heads(hook, m.cfg);
  if (hook_is_pattern(hook)) {
    // [B,H,T,T]: rows (head, query) of T keys per batch row, compared as H*T rows of one
    // group, then reordered to [T, H].
    const int H = mask.G;
    DeviceArray<uint8_t> eq(be, size_t(L) * H * T);
    for (int l = 0; l < L; ++l)
      be.rows_equal(eq.get() + size_t(l) * H * T, base.hook_data(hook, l), source.hook_data(hook, l), B, H * T, 1, T, T);
    const std::vector<uint8_t> ht = eq.download();
    mask.eq.resize(ht.size());
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h)
        for (int t = 0; t < T; ++t) mask.eq[(size_t(l) * T + t) * H + h] = ht[(size_t(l) * H + h) * T + t];
    return mask;
  }
  const int W = hook_group_width(hook, m.cfg);
  const int64_t stride = hook_stride(hook, m);
  DeviceArray<uint8_t> eq(be, size_t(L) * T * mask.G);
  for (int l = 0; l < L; ++l)
    be.rows_equal(eq.get() + size_t(l) * T * mask.G, base.hook_data(hook, l), source.hook_data(hook, l), B, T,
                  mask.G, W, stride);
  mask.eq = eq.download();
  return mask;
}

enum class Plan { Noop, Causal, Run };

// How the fast sweep treats target i: skipped (a bitwise no-op, or unable to reach the
// logits), or one patched run r.
Plan plan_run(Hook hook, const PatchSpec& t, int i, const NoopMask& mask, int T, int L, Run& r) {
  const int g = hook_is_per_head(hook) ? t.head : 0;
  r.target = i;
  if (hook_all_pos(hook)) {
    int p0 = -1;
    for (int p = 0; p < T && p0 < 0; ++p)
      if (!mask.equal(t.layer, p, g)) p0 = p;
    if (p0 < 0) return Plan::Noop;
    r.p = p0;
    r.tail_from = p0;
    r.tail_to = T;
  } else {
    if (mask.equal(t.layer, t.pos, g)) return Plan::Noop;
    r.p = t.pos;
    r.tail_from = t.pos;
    r.tail_to = t.pos + 1;
  }
  if (hook == Hook::ResidPre) {
    r.start = t.layer;
  } else if (hook_is_qkv(hook)) {
    // Attention at layer l changes for positions >= p (a key or value is read by every later
    // query; a query only at p, but the tail recomputes [p, T) like the others).
    r.tail = true;
    r.qkv = true;
    r.start = t.layer + 1;
    if (r.start == L && hook_base(hook) == Hook::Q && !hook_all_pos(hook) && r.p != T - 1)
      return Plan::Causal;  // a query before T-1 in the last layer cannot reach the logits
    r.tail_to = T;
  } else {
    r.tail = true;
    r.start = t.layer + 1;
    if (r.start == L && r.tail_to < T) return Plan::Causal;  // after attention in the last layer, before T-1
  }
  return Plan::Run;
}

// Token-layer evaluations of one run, as FastSweep counts them: B rows per position from p
// in every layer from `start`, plus its tail rows (only T-1 in the last layer).
int64_t run_cost(const Run& r, int B, int T, int L) {
  int64_t c = int64_t(B) * (T - r.p) * (L - r.start);
  if (r.qkv)
    c += int64_t(B) * (T - r.p);  // the tail's attention needs every position from p, even at the end
  else if (r.tail)
    c += int64_t(B) * (r.start < L ? r.tail_to - r.tail_from : 1);
  return c;
}

}  // namespace

std::vector<int64_t> sweep_target_costs(Backend& be, const Model& m, const ForwardState& base,
                                        const ForwardState& source, Hook hook, bool naive) {
  const int B = base.B, T = base.T, L = m.cfg.num_hidden_layers, H = hook_heads(hook, m.cfg);
  const std::vector<PatchSpec> targets = sweep_targets(hook, L, T, H);
  std::vector<int64_t> cost(targets.size(), int64_t(B) * T * L);
  if (naive) return cost;
  const NoopMask mask = noop_mask(be, m, base, source, hook);
  for (size_t i = 0; i < targets.size(); ++i) {
    Run r;
    cost[i] = plan_run(hook, targets[i], static_cast<int>(i), mask, T, L, r) == Plan::Run
                  ? run_cost(r, B, T, L)
                  : 0;
  }
  return cost;
}

SweepResult activation_sweep(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source,
                             const std::vector<int32_t>& answer, const std::vector<int32_t>& other, Hook hook,
                             const SweepOptions& opt) {
  return activation_sweep(be, m, base, source, logit_diff_spec(answer, other), hook, opt);
}

SweepResult activation_sweep(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source,
                             const MetricSpec& metric, Hook hook, const SweepOptions& opt) {
  const auto t0 = Clock::now();
  const int B = base.B, T = base.T, L = m.cfg.num_hidden_layers, H = hook_heads(hook, m.cfg);
  PHI3_CHECK(source.B == B && source.T == T, "activation sweep: base and source batches differ in shape");
  SweepResult res;
  res.hook = hook;
  res.targets = sweep_targets(hook, L, T, H);
  const int64_t n_targets = static_cast<int64_t>(res.targets.size());
  res.ld.assign(size_t(n_targets) * B, 0.0f);
  res.work.fast = !opt.naive;
  res.work.naive_token_layer_evals = n_targets * int64_t(B) * T * L;

  PHI3_CHECK(metric.B() == B, "activation sweep: one answer per batch row");
  // Base run's own metric: the result of every skipped patch.
  LogitDiff base_ld = metric_values(be, m, base, metric);
  auto set_base = [&](int64_t i) {
    for (int b = 0; b < B; ++b) res.ld[size_t(i) * B + b] = base_ld.per_row[b];
  };

  const int64_t first = std::max<int64_t>(0, opt.first), last = opt.last < 0 ? n_targets : std::min(opt.last, n_targets);
  // The targets this call computes: [first, last), and of those only opt.only's when given.
  std::vector<char> want(size_t(n_targets), 0);
  for (int64_t i = first; i < last; ++i) want[i] = 1;
  if (opt.only) {
    std::vector<char> listed(size_t(n_targets), 0);
    for (int64_t i : *opt.only) {
      if (i < 0 || i >= n_targets)
        throw Error("activation sweep: target " + std::to_string(i) + " of " + hook_name(hook) + " is out of range (" +
                    std::to_string(n_targets) + " targets)");
      listed[i] = 1;
    }
    for (int64_t i = 0; i < n_targets; ++i) want[i] = want[i] && listed[i];
  }
  const int64_t n_want = std::count(want.begin(), want.end(), 1);
  if (n_want < n_targets) {  // the others are another caller's: NaN here, no work counted
    res.work.naive_token_layer_evals = n_want * int64_t(B) * T * L;
    for (int64_t i = 0; i < n_targets; ++i)
      if (!want[i])
        for (int b = 0; b < B; ++b) res.ld[size_t(i) * B + b] = NAN;
  }

  if (opt.naive) {
    // One full forward per patch, nothing skipped: the reference the fast sweep must equal.
    int64_t done = 0;
    for (int64_t i = first; i < last; ++i) {
      if (!want[i]) continue;
      ForwardOptions fo;
      fo.keep_pattern = false;
      fo.patch = &res.targets[i];
      fo.source = &source;
      ForwardState s = forward(be, m, base.batch, fo);
      LogitDiff ld = metric_values(be, m, s, metric);
      for (int b = 0; b < B; ++b) res.ld[size_t(i) * B + b] = ld.per_row[b];
      res.work.token_layer_evals += int64_t(B) * T * L;
      if (opt.progress) opt.progress(++done, n_want);
    }
    res.work.patched_runs = n_want;
    res.work.chunks = static_cast<int>(n_want);
    res.work.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return res;
  }

  // The no-op test on the device (the naive loop above needs none).
  const NoopMask mask = noop_mask(be, m, base, source, hook);
  std::vector<Run> runs;
  for (int64_t i = first; i < last; ++i) {
    if (!want[i]) continue;
    Run r;
    switch (plan_run(hook, res.targets[i], static_cast<int>(i), mask, T, L, r)) {
      case Plan::Noop:
        ++res.work.skipped_noop;
        set_base(i);
        break;
      case Plan::Causal:
        ++res.work.skipped_causal;
        set_base(i);
        break;
      case Plan::Run:
        runs.push_back(r);
        break;
    }
  }
  res.work.patched_runs = static_cast<int64_t>(runs.size());

  std::stable_sort(runs.begin(), runs.end(), [](const Run& a, const Run& b) { return a.start < b.start; });
  // Chunks: consecutive runs (sorted by start layer, so the active runs of a chunk are a
  // prefix at every layer) whose work buffers fit the budget; with several streams, at
  // least two chunks per stream so they overlap.
  FastSweep sizer(be, m, base, source, metric, hook);
  size_t total_bytes = 0;
  for (const Run& r : runs) total_bytes += sizer.run_bytes(r);
  const int streams = std::max(1, opt.streams > 0 ? opt.streams : be.preferred_streams());
  size_t budget = opt.mem_budget ? opt.mem_budget : std::max<size_t>(be.free_memory() / (4 * streams), size_t(64) << 20);
  if (streams > 1) budget = std::min(budget, std::max<size_t>(1, total_bytes / (2 * streams) + 1));
  std::vector<std::vector<Run>> chunks;
  for (size_t i = 0; i < runs.size();) {
    std::vector<Run> chunk;
    size_t bytes = 0;
    while (i < runs.size() && (chunk.empty() || bytes + sizer.run_bytes(runs[i]) <= budget)) {
      bytes += sizer.run_bytes(runs[i]);
      chunk.push_back(runs[i++]);
    }
    chunks.push_back(std::move(chunk));
  }
  res.work.chunks = static_cast<int>(chunks.size());

  // A pattern patch is a z patch whose source z comes from the source run's pattern rows.
  std::vector<DeviceArray<float>> zp;
  std::vector<const float*> zp_layers;
  if (hook_is_pattern(hook) && !runs.empty())
    for (int l = 0; l < L; ++l) {
      zp.push_back(z_from_pattern(be, m, source.hook_data(hook, l), base, l));
      zp_layers.push_back(zp.back().get());
    }
  // Workers: the calling backend plus its persistent lanes (own streams), taking chunks in turn.
  const std::vector<Backend*> lanes = be.lanes(std::max(1, std::min(streams, static_cast<int>(chunks.size()))));
  be.synchronize();  // the base/source caches are complete before other streams read them
  std::atomic<size_t> next{0};
  std::mutex mu;
  int64_t done = 0;
  std::exception_ptr error;
  std::vector<int64_t> evals(lanes.size(), 0);
  auto worker = [&](size_t lane) {
    try {
      FastSweep fs(*lanes[lane], m, base, source, metric, hook);
      fs.tspec_ = res.targets;
      fs.zp_ = zp_layers.empty() ? nullptr : zp_layers.data();
      for (size_t c; (c = next++) < chunks.size();) {
        fs.run_chunk(chunks[c], res.ld, evals[lane]);
        std::lock_guard<std::mutex> lock(mu);
        done += static_cast<int64_t>(chunks[c].size());
        if (opt.progress) opt.progress(done, static_cast<int64_t>(runs.size()));
      }
      lanes[lane]->synchronize();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
      next = chunks.size();  // stop the others
    }
  };
  if (lanes.size() == 1) {
    worker(0);
  } else {
    std::vector<std::thread> threads;
    for (size_t k = 0; k < lanes.size(); ++k) threads.emplace_back(worker, k);
    for (auto& t : threads) t.join();
  }
  if (error) std::rethrow_exception(error);
  for (int64_t e : evals) res.work.token_layer_evals += e;
  res.work.streams = static_cast<int>(lanes.size());
  res.work.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return res;
}

}  // namespace phi3
