// The forward pass over a padded batch, keeping every hook activation on the device:
// these buffers are the patch caches of the sweep engine (DESIGN §4, §6).
#pragma once
#include <cstdint>
#include <vector>

#include "model/batch.h"
#include "model/hooks.h"
#include "model/model.h"
#include "model/moe.h"
#include "runtime/arena.h"
#include "runtime/tensor.h"

namespace phi3 {

// Which of the buffers an exact sweep may read a sweep-cache forward keeps per layer (resid_pre,
// k_rot and v always): those of the hooks swept (sweep_cache_keep).
struct SweepCacheKeep {
  bool qkv = true, z = true, attn_out = true, resid_mid = true, mlp_out = true;
};
SweepCacheKeep sweep_cache_keep(const std::vector<Hook>& hooks);
// Throws naming the hook when the model has no such activation: mlp_post on a mixture-of-experts
// model (no single MLP's neurons), router on a dense one.
void check_hook_supported(Hook h, const ModelConfig& c);

struct LayerActs {
  DeviceArray<float> resid_pre;  // [N,D]
  // GEMM inputs (ln1, z, ln2, act) are fp32 on fp32 weights; on bf16 weights the producing
  // op writes them in bf16 (the *16 buffers) and ln1, ln2, act have no fp32 copy.
  DeviceArray<float> ln1;        // [N,D] normed input of attention (fp32 weights)
  DeviceArray<uint16_t> ln1_16;  // [N,D] the same in bf16 (bf16 weights)
  DeviceArray<float> rstd1;      // [N]
  DeviceArray<float> qkv;        // [N,(H+2KVH)*HD]  hook_q | hook_k | hook_v (pre-rotary)
  DeviceArray<float> q_rot;      // [N,H*HD]   hook_rot_q
  DeviceArray<float> k_rot;      // [N,KVH*HD] hook_rot_k  (the key cache)
  DeviceArray<float> v;          // [N,KVH*HD] hook_v      (the value cache)
  DeviceArray<float> z;          // [N,H*HD]   hook_z
  DeviceArray<uint16_t> z16;     // [N,H*HD]   z in bf16, o_proj's input (bf16 weights)
  DeviceArray<float> pattern;    // [B,H,T,T]  hook_pattern (when kept)
  DeviceArray<float> attn_out;   // [N,D]
  DeviceArray<float> resid_mid;  // [N,D]
  DeviceArray<float> ln2;        // [N,D] (fp32 weights)
  DeviceArray<uint16_t> ln2_16;  // [N,D] (bf16 weights)
  DeviceArray<float> rstd2;      // [N]
  DeviceArray<float> gate_up;    // [N,2F]
  DeviceArray<float> act;        // [N,F] silu(gate)*up (fp32 weights, or ForwardOptions::keep_mlp_post)
  DeviceArray<uint16_t> act16;   // [N,F] (bf16 weights)
  DeviceArray<float> mlp_out;    // [N,D]
  // post_norms (Gemma 2): o_proj's and down_proj's outputs before their RMSNorm, and its rstd;
  // attn_out / mlp_out are the normed values (what the residual adds, TransformerLens' hooks).
  DeviceArray<float> attn_raw, mlp_raw;  // [N,D]
  DeviceArray<float> rstd_pa, rstd_pm;   // [N]
  DeviceArray<float> stats;              // [B,H,T,2] attention softmax (max, sum) per query row: the backward's P
  // MoE models: the block's routing and grouped expert activations (model/moe.h; own device
  // memory, outside the arena); ln2 is then fp32 (the grouped rows are gathered from it) and
  // gate_up / act stay empty.
  MoeActs moe;
};

struct ForwardState {
  std::shared_ptr<Arena> arena;  // holds every activation buffer below
  int B = 0, T = 0;
  Batch batch;
  std::vector<LayerActs> layers;
  DeviceArray<float> resid_final;  // [N,D] resid_post of the last layer
  DeviceArray<float> ln_f;         // [N,D] (fp32 weights)
  DeviceArray<uint16_t> ln_f16;    // [N,D] (bf16 weights)
  DeviceArray<float> rstd_f;       // [N]
  DeviceArray<float> logits;       // [N,V]
  DeviceArray<int32_t> tokens, pos, pad;  // device copies of the batch
  DeviceArray<float> inv_freq;     // [rot_dim/2]
  DeviceArray<float> rope_table;   // [n_pos, rot_dim/2, 2] cos/sin of every position in the batch
  RopeParams rope;
  // ModelConfig::rope_local_theta: the local base's frequencies, table and parameters (the
  // layers with ModelConfig::local_rope); empty otherwise.
  DeviceArray<float> inv_freq_local, rope_table_local;
  RopeParams rope_local;
  // The rotary parameters layer l applies (and its backward and every recomputation un-applies).
  const RopeParams& layer_rope(const ModelConfig& c, int l) const { return c.local_rope(l) ? rope_local : rope; }
  int q_width = 0, kv_width = 0;   // H*HD and KVH*HD: where k and v start in a qkv row
  // ForwardOptions::checkpoint: each layer holds only resid_pre; recompute_layer gives the rest.
  bool checkpointed = false;
  // ForwardOptions::sweep_cache: only the buffers the exact sweep reads are this layer's own.
  bool sweep_cache = false;
  SweepCacheKeep cache_keep;       // (sweep_cache) the per-layer buffers kept
  bool keep_mlp_post = false;      // the fp32 copy of act exists beside the bf16 GEMM input
  int64_t N() const { return static_cast<int64_t>(B) * T; }
  // resid_post of layer l (= resid_pre of layer l+1).
  const float* resid_post(int l) const {
    return l + 1 < static_cast<int>(layers.size()) ? layers[l + 1].resid_pre.get() : resid_final.get();
  }
  // Device pointer of a hook's activation at layer l (rows hook_stride apart; q/k/v point
  // into the fused qkv row).
  const float* hook_data(Hook h, int l) const;
  // Any cached activation by its TransformerLens name: "logits", "blocks.3.hook_resid_pre",
  // "blocks.0.attn.hook_q" ([B,T,H,HD]; k/v [B,T,KVH,HD]), "blocks.1.attn.hook_pattern"
  // ([B,H,T,T], when kept), "blocks.2.mlp.hook_post" ([B,T,F], when its fp32 copy exists).
  // Throws naming an unknown or unavailable name.
  TensorView activation(const Backend& be, const Model& m, const std::string& name) const;
  // Batch rows [b0, b0 + nb) of this state as a state of its own: every buffer borrowed at
  // an offset (the arena is shared; the device copies of tokens, positions and pads stay
  // this state's, so it must outlive the view).
  ForwardState rows(Backend& be, int b0, int nb) const;
};

// Device pointer of hook h's activation in one layer's buffers (resid_post: the layer's output,
// the next layer's input); ForwardState::hook_data for a layer kept or recomputed.
const float* hook_data_of(const LayerActs& a, const float* resid_post, int q_width, int kv_width, Hook h);

// [B*T, H*HD] z of every head from a given [B,H,T,T] pattern (a run's hook_pattern) over
// the values of `s`'s layer l (attn_apply_pattern; 0 on s's pad query rows): the z a
// hook_pattern patch gives.
DeviceArray<float> z_from_pattern(Backend& be, const Model& m, const float* pattern, const ForwardState& s, int l);

// Elements between consecutive rows of a hook's activation (D, H*HD for z, the qkv row width
// for q/k/v), the heads a per-head hook has (H, KVH for k/v; 1 otherwise) and the width of one
// patched group (HD for per-head hooks, D otherwise).
int64_t hook_stride(Hook h, const Model& m);
int hook_heads(Hook h, const ModelConfig& c);
int hook_group_width(Hook h, const ModelConfig& c);

// Splits "blocks.<l>.<hook>" into l and hook ("hook_resid_pre", "attn.hook_q", ...);
// throws naming the name when it is not of that form or l is out of range.
void split_hook_name(const std::string& name, int n_layers, int& layer, std::string& hook);

struct ForwardOptions {
  // Keep every layer's [B,H,T,T] attention pattern (hook_pattern: patching or caching it, the
  // AtP* QK fix). Off by default: the backward recomputes the probabilities from the per-row
  // softmax stats, so a pass without patterns holds O(T) per layer, not O(T^2).
  bool keep_pattern = false;
  // Keep the fp32 SwiGLU output (hook_mlp_post) also when the GEMM inputs are bf16 (else only
  // its bf16 rounding exists there); needed to patch or attribute mlp_post on such a backend.
  bool keep_mlp_post = false;
  // Optional patch: replace `patch.hook` at patch.layer with `source`'s value while running.
  const PatchSpec* patch = nullptr;
  const ForwardState* source = nullptr;
  // Optional input embeddings [B*T, D] (device memory) used instead of the tokens' rows of the
  // embedding table (EAP-IG's interpolated inputs); tokens still give pads and positions.
  const float* input_embeddings = nullptr;
  // Activation checkpointing for long prompts: keep only each layer's input (resid_pre, [N,D])
  // and the final norm and logits; a layer's internals are recomputed from its input when
  // needed (recompute_layer: the same ops on the same inputs, bitwise the values a full pass
  // keeps). L x N x D instead of about L x N x (10 D + 3 F). No patch, no pattern.
  bool checkpoint = false;
  // For the exact sweep alone: each layer keeps only what the sweep reads (resid_pre, k_rot, v,
  // and of qkv, z, attn_out, resid_mid, mlp_out those cache_keep names; the fp32 neurons with
  // keep_mlp_post; patterns with keep_pattern); norms, q_rot, gate_up, the softmax stats and the
  // rest share one set of buffers, so the pass cannot be backpropagated. 3 D (resid hooks) to
  // 10 D floats per token and layer instead of about 16 D + 2.5 F.
  bool sweep_cache = false;
  SweepCacheKeep cache_keep;
};

// Layer l's internals (every LayerActs buffer; resid_pre borrowed from s) recomputed from its
// input, in a fresh arena returned through `arena` (hold it while the buffers are used).
LayerActs recompute_layer(Backend& be, const Model& m, const ForwardState& s, int l, std::shared_ptr<Arena>& arena);

// Attention parameters with the model's dimensions, mask rules and the unpacked row strides
// (q/z rows H*HD wide, k/v rows KVH*HD wide); callers set pointers and segments.
AttnParams attention_params(const Model& m, int T, int layer);  // layer: its sliding window
// The plain pass of layer `a` over the batch (one segment per row, pattern as kept).
AttnParams plain_attention_params(const Model& m, const ForwardState& s, const LayerActs& a, int layer,
                                  const AttnSegment* segs);

// Rotary parameters for a batch whose longest row has `seq_len` tokens.
std::vector<float> rope_inv_freq(const ModelConfig& cfg, int seq_len);

ForwardState forward(Backend& be, const Model& m, const Batch& batch, const ForwardOptions& opt = {});

// Clean and corrupted batches (same T) in one forward pass of 2B rows: every weight is read
// once for both (attribution patching's two runs in one pass), the halves as views. Not for
// the sweep's caches: a row's GEMM result can change in the last bits with its place in the
// GEMM, so rows equal in both runs may differ here and fewer patches are seen to be no-ops.
struct PairForward {
  ForwardState both;
  ForwardState clean, corrupted;  // rows [0, B) and [B, 2B) of `both`
};
PairForward forward_pair(Backend& be, const Model& m, const Batch& clean, const Batch& corrupted,
                         const ForwardOptions& opt = {});

// Bytes of activation buffers (the arena) of a forward pass over B x T tokens; gemm16: the
// GEMM inputs are kept in bf16 (Backend::gemm_in_bf16).
size_t forward_arena_bytes(const Model& m, int B, int T, bool keep_pattern, bool gemm16 = false,
                           bool keep_mlp_post = false, bool checkpoint = false, bool sweep_cache = false,
                           const SweepCacheKeep& cache_keep = {});
// Bytes a forward pass over B x T tokens holds outside its arena: the MoE blocks' routing and
// grouped expert rows (model/moe.h; every layer keeps its own), 0 for a dense model.
size_t moe_pass_bytes(const Model& m, int B, int T);
// Bytes of one layer's recomputed internals (recompute_layer's arena).
size_t layer_arena_bytes(const Model& m, int B, int T, bool gemm16 = false, bool keep_mlp_post = false);

// The rotary cos/sin table of positions [0, n_pos) (RopeParams::cos_sin), filled on the
// host with rope_angle, and the positions it must cover for a batch.
std::vector<float> rope_cos_sin_table(const std::vector<float>& inv_freq, float attn_scale, int n_pos);
int rope_table_positions(const Batch& batch);

// Mean and per-row logit differences at the last position.
struct LogitDiff {
  double mean = 0;
  std::vector<float> per_row;
};
LogitDiff logit_diff(Backend& be, const Model& m, const ForwardState& s,
                     const std::vector<int32_t>& answer, const std::vector<int32_t>& other);

// Host copy of the last-position logits [B,V].
std::vector<float> last_logits(Backend& be, const Model& m, const ForwardState& s);

// Throws naming the first layer and hook holding a NaN/Inf (checked in forward order).
void check_finite(Backend& be, const Model& m, const ForwardState& s, const char* run_name);

}  // namespace phi3
