// Hook points (TransformerLens names, DESIGN §4) and the patch descriptions the forward
// pass understands.
#pragma once
#include <string>
#include <vector>

namespace phi3 {

enum class Hook {
  ResidPre,   // blocks.l.hook_resid_pre     [B,T,D]
  ResidMid,   // blocks.l.hook_resid_mid     [B,T,D]
  ResidPost,  // blocks.l.hook_resid_post    [B,T,D]
  AttnOut,    // blocks.l.hook_attn_out      [B,T,D]
  MlpOut,     // blocks.l.hook_mlp_out       [B,T,D]
  Z,          // blocks.l.attn.hook_z        [B,T,H,HD]  (patched per head and position)
  ZAllPos,    // blocks.l.attn.hook_z        (patched per head, every position)
  Q,          // blocks.l.attn.hook_q        [B,T,H,HD]  before rotary (per head and position)
  QAllPos,    // blocks.l.attn.hook_q        (per head, every position)
  K,          // blocks.l.attn.hook_k        [B,T,KVH,HD] before rotary (per KV head and position)
  KAllPos,    // blocks.l.attn.hook_k        (per KV head, every position)
  V,          // blocks.l.attn.hook_v        [B,T,KVH,HD] (per KV head and position)
  VAllPos,    // blocks.l.attn.hook_v        (per KV head, every position)
  Pattern,    // blocks.l.attn.hook_pattern  [B,H,T,T] (one query row of one head)
  PatternAllPos,  // blocks.l.attn.hook_pattern (every query row of one head)
  MlpPost,    // blocks.l.mlp.hook_post      [B,T,F] SwiGLU output, the input of down_proj
              // (one neuron at one position; groups of width 1, "heads" = F neurons)
  Router,     // blocks.l.mlp.hook_router    [B,T,E] a MoE block's router logits (one layer at
              // one position; mixture-of-experts models only)
};

std::string hook_name(Hook h);                 // "resid_pre", ..., "z", "z_all_pos"
std::string hook_title(Hook h);                // "Residual (pre)", "Attention output", ...
// A hook by its short name ("resid_pre", "z") or its TransformerLens name ("hook_resid_pre",
// "attn.hook_z", "mlp.hook_post", "blocks.attn.hook_z", "blocks.3.hook_resid_pre"; a layer in the
// name is dropped here: parse_hook_spec keeps it). Throws naming the unknown hook and the
// closest known name.
Hook parse_hook(const std::string& name);
// A hook name with the layer it names: "blocks.3.attn.hook_z" -> {Z, 3}; a name without a
// layer ("z", "attn.hook_z", "blocks.attn.hook_z") -> layer -1. TransformerLens names map to
// the per-position hooks (attn.hook_z -> z, attn.hook_pattern -> pattern).
struct HookSpec {
  Hook hook = Hook::ResidPre;
  int layer = -1;  // -1: every layer
};
HookSpec parse_hook_spec(const std::string& name);
std::vector<HookSpec> parse_hook_spec_list(const std::string& list);  // as parse_hook_list
// Comma-separated hook names ("resid_pre,attn_out", TransformerLens names too; layers dropped:
// parse_hook_spec_list keeps them); "" and "none" give an empty list.
std::vector<Hook> parse_hook_list(const std::string& list);
bool hook_is_per_head(Hook h);  // z, q, k, v, pattern (and their all-position forms), mlp_post
bool hook_is_pattern(Hook h);   // pattern, pattern_all_pos (laid out [B,H,T,T], not by token row)
bool hook_all_pos(Hook h);      // patched at every position at once (the *_all_pos hooks)
bool hook_is_qkv(Hook h);       // q, k, v: the attention inputs, before rotary
bool hook_is_kv(Hook h);        // k, v: one per KV head, shared by a group of query heads
// The per-position hook an all-position hook patches (z_all_pos -> z, ...); others: itself.
Hook hook_base(Hook h);
// The TransformerLens hook name inside a block: "hook_resid_pre", "attn.hook_z", "attn.hook_q".
std::string hook_tl_name(Hook h);
std::vector<Hook> all_hooks();

// Replace the activation of `hook` at `layer` (position `pos` or every position when
// pos < 0; head `head` for Z/ZAllPos) in every batch row with the source run's value.
struct PatchSpec {
  Hook hook = Hook::ResidPre;
  int layer = 0;
  int pos = 0;
  int head = -1;
};

}  // namespace phi3
