#include "model/forward.h"

#include <cmath>
#include <type_traits>

#include "runtime/error.h"

namespace phi3 {

std::vector<float> rope_inv_freq(const ModelConfig& cfg, int seq_len) { return cfg.inv_freq(seq_len); }

size_t forward_arena_bytes(const Model& m, int B, int T, bool keep_pattern) {
  const ModelConfig& c = m.cfg;
  const size_t N = size_t(B) * T, D = c.hidden_size, F = c.intermediate_size;
  ArenaPlan p;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    p.add<float>(N * D).add<float>(N * D).add<float>(N);                    // resid_pre, ln1, rstd1
    p.add<float>(N * m.qkv_width()).add<float>(N * m.q_width());            // qkv, q_rot
    p.add<float>(N * m.kv_width()).add<float>(N * m.kv_width());            // k_rot, v
    p.add<float>(N * m.q_width());                                          // z
    if (keep_pattern) p.add<float>(size_t(B) * c.num_attention_heads * T * T);
    p.add<float>(N * D).add<float>(N * D).add<float>(N * D).add<float>(N);  // attn_out, resid_mid, ln2, rstd2
    p.add<float>(N * 2 * F).add<float>(N * F).add<float>(N * D);            // gate_up, act, mlp_out
  }
  p.add<float>(N * D).add<float>(N * D).add<float>(N).add<float>(N * size_t(c.vocab_size));  // final
  return p.bytes();
}

AttnParams attention_params(const Model& m, int T) {
  const ModelConfig& c = m.cfg;
  AttnParams ap;
  ap.q_stride = m.q_width();
  ap.kv_stride = m.kv_width();
  ap.cache_stride = m.kv_width();
  ap.z_stride = m.q_width();
  ap.T = T;
  ap.H = c.num_attention_heads;
  ap.KVH = c.num_key_value_heads;
  ap.HD = c.head_dim;
  ap.window = c.sliding_window;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  return ap;
}

AttnParams plain_attention_params(const Model& m, const ForwardState& s, const LayerActs& a, const AttnSegment* segs) {
  AttnParams ap = attention_params(m, s.T);
  ap.q = a.q_rot.get();
  ap.k = a.k_rot.get();
  ap.v = a.v.get();
  ap.z = a.z.get();
  ap.pattern = a.pattern.size() ? a.pattern.get() : nullptr;
  ap.pad = s.pad.get();
  ap.segs = segs;
  ap.n_segs = s.B;
  return ap;
}

void split_hook_name(const std::string& name, int n_layers, int& layer, std::string& hook) {
  const std::string prefix = "blocks.";
  size_t dot = name.find('.', prefix.size());
  if (name.compare(0, prefix.size(), prefix) != 0 || dot == std::string::npos)
    throw Error("unknown activation name '" + name + "' (expected blocks.<layer>.<hook> or logits)");
  const std::string num = name.substr(prefix.size(), dot - prefix.size());
  if (num.empty() || num.size() > 6 || num.find_first_not_of("0123456789") != std::string::npos)
    throw Error("unknown activation name '" + name + "': bad layer '" + num + "'");
  layer = std::stoi(num);
  if (layer >= n_layers)
    throw Error("activation '" + name + "': the model has " + std::to_string(n_layers) + " layers");
  hook = name.substr(dot + 1);
}

TensorView ForwardState::activation(const Backend& be, const Model& m, const std::string& name) const {
  const int64_t Bn = B, Tn = T, N = Bn * T, D = m.cfg.hidden_size, H = m.cfg.num_attention_heads;
  const int64_t KVH = m.cfg.num_key_value_heads, HD = m.cfg.head_dim;
  const int64_t QW = m.q_width(), KVW = m.kv_width(), QKVW = m.qkv_width();
  if (name == "logits") return make_view(be, logits.get(), {Bn, Tn, m.cfg.vocab_size}, N, m.cfg.vocab_size, m.cfg.vocab_size);
  int l;
  std::string h;
  split_hook_name(name, static_cast<int>(layers.size()), l, h);
  const LayerActs& a = layers[l];
  if (h == "hook_resid_pre") return make_view(be, a.resid_pre.get(), {Bn, Tn, D}, N, D, D);
  if (h == "hook_resid_mid") return make_view(be, a.resid_mid.get(), {Bn, Tn, D}, N, D, D);
  if (h == "hook_resid_post") return make_view(be, resid_post(l), {Bn, Tn, D}, N, D, D);
  if (h == "hook_attn_out") return make_view(be, a.attn_out.get(), {Bn, Tn, D}, N, D, D);
  if (h == "hook_mlp_out") return make_view(be, a.mlp_out.get(), {Bn, Tn, D}, N, D, D);
  if (h == "attn.hook_q") return make_view(be, a.qkv.get(), {Bn, Tn, H, HD}, N, QW, QKVW);
  if (h == "attn.hook_k") return make_view(be, a.qkv.get() + QW, {Bn, Tn, KVH, HD}, N, KVW, QKVW);
  if (h == "attn.hook_v") return make_view(be, a.qkv.get() + QW + KVW, {Bn, Tn, KVH, HD}, N, KVW, QKVW);
  if (h == "attn.hook_rot_q") return make_view(be, a.q_rot.get(), {Bn, Tn, H, HD}, N, QW, QW);
  if (h == "attn.hook_rot_k") return make_view(be, a.k_rot.get(), {Bn, Tn, KVH, HD}, N, KVW, KVW);
  if (h == "attn.hook_z") return make_view(be, a.z.get(), {Bn, Tn, H, HD}, N, QW, QW);
  if (h == "attn.hook_pattern") {
    if (!a.pattern.size()) throw Error("activation '" + name + "': the pattern was not kept by this forward pass");
    return make_view(be, a.pattern.get(), {Bn, H, Tn, Tn}, Bn * H * Tn, Tn, Tn);
  }
  throw Error("unknown activation name '" + name + "'");
}

const float* ForwardState::hook_data(Hook h, int l) const {
  const LayerActs& a = layers.at(l);
  switch (h) {
    case Hook::ResidPre: return a.resid_pre.get();
    case Hook::ResidMid: return a.resid_mid.get();
    case Hook::ResidPost: return resid_post(l);
    case Hook::AttnOut: return a.attn_out.get();
    case Hook::MlpOut: return a.mlp_out.get();
    case Hook::Z:
    case Hook::ZAllPos: return a.z.get();
  }
  return nullptr;
}

namespace {

// Writes the source run's value of the patched hook into `dst` (row width `width`).
// Rows b*T+pos for every b (every position when pos < 0); for Z only head `head`'s slice.
void apply_patch(Backend& be, float* dst, const float* src, int width, const PatchSpec& p,
                 const ForwardState& s, int head_dim) {
  std::vector<int32_t> rows;
  for (int b = 0; b < s.B; ++b) {
    if (p.pos >= 0) {
      rows.push_back(b * s.T + p.pos);
    } else {
      for (int t = 0; t < s.T; ++t) rows.push_back(b * s.T + t);
    }
  }
  DeviceArray<int32_t> idx = to_device(be, rows);
  if (hook_is_per_head(p.hook)) {
    int off = p.head * head_dim;
    be.copy_rows(dst + off, width, idx.get(), src + off, width, idx.get(), static_cast<int>(rows.size()), head_dim);
  } else {
    be.copy_rows(dst, width, idx.get(), src, width, idx.get(), static_cast<int>(rows.size()), width);
  }
}

}  // namespace

ForwardState forward(Backend& be, const Model& m, const Batch& batch, const ForwardOptions& opt) {
  const ModelConfig& c = m.cfg;
  const int B = batch.B, T = batch.T, L = c.num_hidden_layers;
  const int D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int H = c.num_attention_heads, KVH = c.num_key_value_heads, HD = c.head_dim;
  const int QKVW = m.qkv_width(), QW = m.q_width(), KVW = m.kv_width();
  const int N = B * T;
  for (int32_t t : batch.tokens)
    if (t < 0 || t >= V) throw Error("token id " + std::to_string(t) + " is outside the vocabulary (" + std::to_string(V) + ")");
  if (opt.patch) {
    PHI3_CHECK(opt.source && opt.source->B == B && opt.source->T == T, "forward: patch source has another batch shape");
    PHI3_CHECK(opt.patch->layer >= 0 && opt.patch->layer < L, "forward: patch layer out of range");
  }

  ForwardState s;
  s.arena = std::make_shared<Arena>(be, forward_arena_bytes(m, B, T, opt.keep_pattern),
                                    "forward pass of " + std::to_string(B) + " x " + std::to_string(T) + " tokens");
  Arena& A = *s.arena;
  s.B = B;
  s.T = T;
  s.batch = batch;
  s.tokens = to_device(be, batch.tokens);
  s.pos = to_device(be, batch.pos);
  s.pad = to_device(be, batch.pad);
  s.inv_freq = to_device(be, c.inv_freq(batch.max_seq_len()));
  s.rope.inv_freq = s.inv_freq.get();
  s.rope.rot_dim = c.rotary_dim;
  s.rope.attn_scale = c.rope_attention_scale();

  std::vector<AttnSegment> segs(B);
  for (int b = 0; b < B; ++b) segs[b] = AttnSegment{b, 0, b * T, 0, b * T};
  DeviceArray<AttnSegment> dsegs = to_device(be, segs);

  const PatchSpec* patch = opt.patch;
  auto patch_here = [&](Hook h, int l, float* dst, int width) {
    if (patch && patch->layer == l &&
        (patch->hook == h || (h == Hook::Z && patch->hook == Hook::ZAllPos))) {
      PatchSpec p = *patch;
      if (p.hook == Hook::ZAllPos) p.pos = -1;
      apply_patch(be, dst, opt.source->hook_data(patch->hook, l), width, p, s, HD);
    }
  };

  s.layers.resize(L);
  for (int l = 0; l < L; ++l) {
    LayerActs& a = s.layers[l];
    a.resid_pre = A.take<float>(size_t(N) * D);
    if (l == 0) {
      be.embedding_forward(a.resid_pre.get(), s.tokens.get(), m.w.embed, N);
    } else {
      // resid_post of layer l-1 was written straight into this buffer (see below).
    }
  }
  s.resid_final = A.take<float>(size_t(N) * D);

  for (int l = 0; l < L; ++l) {
    LayerActs& a = s.layers[l];
    const LayerWeights& w = m.w.layers[l];
    patch_here(Hook::ResidPre, l, a.resid_pre.get(), D);

    a.ln1 = A.take<float>(size_t(N) * D);
    a.rstd1 = A.take<float>(N);
    be.rmsnorm_forward(a.ln1.get(), a.rstd1.get(), a.resid_pre.get(), w.ln1, N, D, c.rms_norm_eps);
    a.qkv = A.take<float>(size_t(N) * QKVW);
    be.linear_forward(a.qkv.get(), a.ln1.get(), w.qkv, N);
    a.q_rot = A.take<float>(size_t(N) * QW);
    a.k_rot = A.take<float>(size_t(N) * KVW);
    a.v = A.take<float>(size_t(N) * KVW);
    be.rotary_forward(a.q_rot.get(), QW, a.qkv.get(), QKVW, s.pos.get(), N, H, HD, s.rope);
    be.rotary_forward(a.k_rot.get(), KVW, a.qkv.get() + QW, QKVW, s.pos.get(), N, KVH, HD, s.rope);
    be.copy_rows(a.v.get(), KVW, nullptr, a.qkv.get() + QW + KVW, QKVW, nullptr, N, KVW);

    a.z = A.take<float>(size_t(N) * QW);
    if (opt.keep_pattern) {
      a.pattern = A.take<float>(size_t(B) * H * T * T);
      be.zero(a.pattern.get(), a.pattern.size() * sizeof(float));
    }
    AttnParams ap = plain_attention_params(m, s, a, dsegs.get());
    be.attention_forward(ap);
    patch_here(Hook::Z, l, a.z.get(), QW);

    a.attn_out = A.take<float>(size_t(N) * D);
    be.linear_forward(a.attn_out.get(), a.z.get(), w.o, N);
    patch_here(Hook::AttnOut, l, a.attn_out.get(), D);
    a.resid_mid = A.take<float>(size_t(N) * D);
    be.add(a.resid_mid.get(), a.resid_pre.get(), a.attn_out.get(), int64_t(N) * D);
    patch_here(Hook::ResidMid, l, a.resid_mid.get(), D);

    a.ln2 = A.take<float>(size_t(N) * D);
    a.rstd2 = A.take<float>(N);
    be.rmsnorm_forward(a.ln2.get(), a.rstd2.get(), a.resid_mid.get(), w.ln2, N, D, c.rms_norm_eps);
    a.gate_up = A.take<float>(size_t(N) * 2 * F);
    be.linear_forward(a.gate_up.get(), a.ln2.get(), w.gate_up, N);
    a.act = A.take<float>(size_t(N) * F);
    be.swiglu_forward(a.act.get(), a.gate_up.get(), N, F);
    a.mlp_out = A.take<float>(size_t(N) * D);
    be.linear_forward(a.mlp_out.get(), a.act.get(), w.down, N);
    patch_here(Hook::MlpOut, l, a.mlp_out.get(), D);

    float* post = l + 1 < L ? s.layers[l + 1].resid_pre.get() : s.resid_final.get();
    be.add(post, a.resid_mid.get(), a.mlp_out.get(), int64_t(N) * D);
    patch_here(Hook::ResidPost, l, post, D);
  }

  s.ln_f = A.take<float>(size_t(N) * D);
  s.rstd_f = A.take<float>(N);
  be.rmsnorm_forward(s.ln_f.get(), s.rstd_f.get(), s.resid_final.get(), m.w.final_norm, N, D, c.rms_norm_eps);
  s.logits = A.take<float>(size_t(N) * V);
  be.linear_forward(s.logits.get(), s.ln_f.get(), m.w.lm_head, N);
  return s;
}

std::vector<float> last_logits(Backend& be, const Model& m, const ForwardState& s) {
  const int V = m.cfg.vocab_size;
  std::vector<float> out(size_t(s.B) * V);
  for (int b = 0; b < s.B; ++b)
    be.download(out.data() + size_t(b) * V, s.logits.get() + (size_t(b) * s.T + s.T - 1) * V, V * sizeof(float));
  return out;
}

LogitDiff logit_diff(Backend& be, const Model& m, const ForwardState& s, const std::vector<int32_t>& answer,
                     const std::vector<int32_t>& other) {
  const int V = m.cfg.vocab_size;
  PHI3_CHECK(static_cast<int>(answer.size()) == s.B && static_cast<int>(other.size()) == s.B,
             "logit_diff: answer/other must have one token per batch row");
  DeviceArray<int32_t> da = to_device(be, answer), dothr = to_device(be, other);
  DeviceArray<float> ld(be, s.B);
  // Rows T-1 of each batch row: stride T*V between them.
  be.logit_diff_forward(ld.get(), s.logits.get() + size_t(s.T - 1) * V, int64_t(s.T) * V, da.get(), dothr.get(), s.B);
  LogitDiff r;
  r.per_row = ld.download();
  double sum = 0;
  for (float x : r.per_row) sum += x;
  r.mean = sum / s.B;
  return r;
}

void check_finite(Backend& be, const Model& m, const ForwardState& s, const char* run_name) {
  const int N = static_cast<int>(s.N());
  auto scan = [&](const float* p, size_t n, int l, const char* hook) {
    std::vector<float> h(n);
    be.download(h.data(), p, n * sizeof(float));
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(h[i]))
        throw Error(std::string(run_name) + " run: non-finite value (" + std::to_string(h[i]) + ") first appears at " +
                    (l >= 0 ? "blocks." + std::to_string(l) + "." : std::string()) + hook + ", row " +
                    std::to_string(i / (n / N)));
    }
  };
  const int D = m.cfg.hidden_size;
  for (int l = 0; l < static_cast<int>(s.layers.size()); ++l) {
    const LayerActs& a = s.layers[l];
    scan(a.resid_pre.get(), size_t(N) * D, l, "hook_resid_pre");
    scan(a.z.get(), size_t(N) * m.q_width(), l, "attn.hook_z");
    scan(a.attn_out.get(), size_t(N) * D, l, "hook_attn_out");
    scan(a.mlp_out.get(), size_t(N) * D, l, "hook_mlp_out");
  }
  scan(s.resid_final.get(), size_t(N) * D, static_cast<int>(s.layers.size()) - 1, "hook_resid_post");
  scan(s.logits.get(), size_t(N) * m.cfg.vocab_size, -1, "logits");
}

ForwardState ForwardState::rows(Backend& be, int b0, int nb) const {
  PHI3_CHECK(b0 >= 0 && nb >= 0 && b0 + nb <= B, "forward state: rows out of range");
  ForwardState v;
  v.arena = arena;
  v.B = nb;
  v.T = T;
  const size_t r0 = size_t(b0) * T, n = size_t(nb) * T, N_all = size_t(B) * T;
  auto slice = [&](const auto& a) {
    using Elem = std::remove_pointer_t<decltype(a.get())>;
    if (!a.get() || N_all == 0) return DeviceArray<Elem>();
    const size_t w = a.size() / N_all;  // elements per row ([B,H,T,T] patterns: H*T per row)
    return DeviceArray<Elem>::borrowed(be, a.get() + r0 * w, n * w);
  };
  v.batch.B = nb;
  v.batch.T = T;
  v.batch.tokens.assign(batch.tokens.begin() + r0, batch.tokens.begin() + r0 + n);
  v.batch.pos.assign(batch.pos.begin() + r0, batch.pos.begin() + r0 + n);
  v.batch.pad.assign(batch.pad.begin() + b0, batch.pad.begin() + b0 + nb);
  for (const LayerActs& l : layers) {
    LayerActs x;
    x.resid_pre = slice(l.resid_pre);
    x.ln1 = slice(l.ln1);
    x.rstd1 = slice(l.rstd1);
    x.qkv = slice(l.qkv);
    x.q_rot = slice(l.q_rot);
    x.k_rot = slice(l.k_rot);
    x.v = slice(l.v);
    x.z = slice(l.z);
    x.pattern = slice(l.pattern);
    x.attn_out = slice(l.attn_out);
    x.resid_mid = slice(l.resid_mid);
    x.ln2 = slice(l.ln2);
    x.rstd2 = slice(l.rstd2);
    x.gate_up = slice(l.gate_up);
    x.act = slice(l.act);
    x.mlp_out = slice(l.mlp_out);
    v.layers.push_back(std::move(x));
  }
  v.resid_final = slice(resid_final);
  v.ln_f = slice(ln_f);
  v.rstd_f = slice(rstd_f);
  v.logits = slice(logits);
  v.tokens = slice(tokens);
  v.pos = slice(pos);
  v.pad = DeviceArray<int32_t>::borrowed(be, pad.get() + b0, size_t(nb));
  v.inv_freq = DeviceArray<float>::borrowed(be, inv_freq.get(), inv_freq.size());
  v.rope = rope;
  return v;
}

PairForward forward_pair(Backend& be, const Model& m, const Batch& clean, const Batch& corrupted,
                         const ForwardOptions& opt) {
  PHI3_CHECK(clean.T == corrupted.T && clean.B == corrupted.B, "forward_pair: the batches differ in shape");
  Batch both;
  both.B = clean.B + corrupted.B;
  both.T = clean.T;
  for (const Batch* b : {&clean, &corrupted}) {
    both.tokens.insert(both.tokens.end(), b->tokens.begin(), b->tokens.end());
    both.pos.insert(both.pos.end(), b->pos.begin(), b->pos.end());
    both.pad.insert(both.pad.end(), b->pad.begin(), b->pad.end());
  }
  PairForward p;
  p.both = forward(be, m, both, opt);
  p.clean = p.both.rows(be, 0, clean.B);
  p.corrupted = p.both.rows(be, clean.B, corrupted.B);
  return p;
}

}  // namespace phi3
