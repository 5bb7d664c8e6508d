#include "model/hooks.h"

#include <cctype>

#include "runtime/closest_name.h"
#include "runtime/error.h"

namespace phi3 {

std::vector<Hook> all_hooks() {
  return {Hook::ResidPre, Hook::ResidMid, Hook::ResidPost, Hook::AttnOut, Hook::MlpOut,
          Hook::Z,        Hook::ZAllPos,  Hook::Q,         Hook::QAllPos, Hook::K,
          Hook::KAllPos,  Hook::V,        Hook::VAllPos,  Hook::Pattern, Hook::PatternAllPos, Hook::MlpPost,
          Hook::Router};
}

std::string hook_name(Hook h) {
  switch (h) {
    case Hook::ResidPre: return "resid_pre";
    case Hook::ResidMid: return "resid_mid";
    case Hook::ResidPost: return "resid_post";
    case Hook::AttnOut: return "attn_out";
    case Hook::MlpOut: return "mlp_out";
    case Hook::Z: return "z";
    case Hook::ZAllPos: return "z_all_pos";
    case Hook::Q: return "q";
    case Hook::QAllPos: return "q_all_pos";
    case Hook::K: return "k";
    case Hook::KAllPos: return "k_all_pos";
    case Hook::V: return "v";
    case Hook::VAllPos: return "v_all_pos";
    case Hook::Pattern: return "pattern";
    case Hook::PatternAllPos: return "pattern_all_pos";
    case Hook::MlpPost: return "mlp_post";
    case Hook::Router: return "router";
  }
  return "?";
}

std::string hook_title(Hook h) {
  switch (h) {
    case Hook::ResidPre: return "Residual";
    case Hook::ResidMid: return "Residual (mid)";
    case Hook::ResidPost: return "Residual (post)";
    case Hook::AttnOut: return "Attention Output";
    case Hook::MlpOut: return "MLP Output";
    case Hook::Z: return "Head Output (z) by Position";
    case Hook::ZAllPos: return "Head Output (z), All Positions";
    case Hook::Q: return "Query by Position";
    case Hook::QAllPos: return "Query, All Positions";
    case Hook::K: return "Key by Position";
    case Hook::KAllPos: return "Key, All Positions";
    case Hook::V: return "Value by Position";
    case Hook::VAllPos: return "Value, All Positions";
    case Hook::Pattern: return "Attention Pattern by Query Position";
    case Hook::PatternAllPos: return "Attention Pattern, All Queries";
    case Hook::MlpPost: return "MLP Neurons";
    case Hook::Router: return "Router Logits";
  }
  return "?";
}

namespace {

// Every name a hook answers to: its short name, "hook_" + short name, its TransformerLens name.
std::vector<std::pair<std::string, Hook>> hook_aliases() {
  std::vector<std::pair<std::string, Hook>> v;
  for (Hook h : all_hooks()) v.push_back({hook_name(h), h});
  for (Hook h : all_hooks()) v.push_back({hook_tl_name(h), h});  // first match wins: z before z_all_pos
  for (Hook h : all_hooks()) v.push_back({"hook_" + hook_name(h), h});
  return v;
}

[[noreturn]] void unknown_hook(const std::string& name, const std::string& rest) {
  std::vector<std::string> shorts, all;
  for (Hook h : all_hooks()) shorts.push_back(hook_name(h));
  for (const auto& a : hook_aliases()) all.push_back(a.first);
  // Suggest in the form the user wrote: a TransformerLens name for one, a short name otherwise.
  std::string guess = closest_name(rest, all);
  if (!guess.empty() && rest != name) guess = name.substr(0, name.size() - rest.size()) + guess;
  throw Error("unknown hook '" + name + "'" + (guess.empty() ? std::string() : "; did you mean " + guess + "?") +
              " (known: " + [&] {
                std::string k;
                for (const auto& s : shorts) k += (k.empty() ? "" : ", ") + s;
                return k;
              }() + ", or their TransformerLens names such as hook_resid_pre, attn.hook_z, "
                    "blocks.3.hook_resid_pre)");
}

}  // namespace

HookSpec parse_hook_spec(const std::string& name) {
  HookSpec spec;
  std::string rest = name;
  if (rest == "expert_out" || rest == "mlp.hook_expert_out" || rest == "hook_expert_out")
    throw Error("hook '" + name + "' (one expert's weighted output at one position) is not implemented; on a "
                "mixture-of-experts model patch mlp_out (the whole block's output) or router (its logits)");
  if (rest.compare(0, 7, "blocks.") == 0) {
    rest = rest.substr(7);
    size_t i = 0;
    while (i < rest.size() && std::isdigit(static_cast<unsigned char>(rest[i]))) ++i;
    if (i > 0) {
      if (i >= rest.size() || rest[i] != '.' || i > 6) unknown_hook(name, rest);
      spec.layer = std::stoi(rest.substr(0, i));
      rest = rest.substr(i + 1);
    }
  }
  for (const auto& a : hook_aliases())
    if (a.first == rest) {
      spec.hook = a.second;
      return spec;
    }
  unknown_hook(name, rest);
}

Hook parse_hook(const std::string& name) { return parse_hook_spec(name).hook; }

std::vector<HookSpec> parse_hook_spec_list(const std::string& list) {
  std::vector<HookSpec> out;
  if (list == "none") return out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    std::string item = list.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') item.erase(0, 1);
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (!item.empty()) out.push_back(parse_hook_spec(item));
    start = end + 1;
  }
  return out;
}

std::vector<Hook> parse_hook_list(const std::string& list) {
  std::vector<Hook> out;
  for (const HookSpec& s : parse_hook_spec_list(list)) out.push_back(s.hook);
  return out;
}

bool hook_is_per_head(Hook h) {
  return h == Hook::Z || h == Hook::ZAllPos || hook_is_qkv(h) || hook_is_pattern(h) || h == Hook::MlpPost;
}
bool hook_is_pattern(Hook h) { return h == Hook::Pattern || h == Hook::PatternAllPos; }
bool hook_all_pos(Hook h) {
  return h == Hook::ZAllPos || h == Hook::QAllPos || h == Hook::KAllPos || h == Hook::VAllPos ||
         h == Hook::PatternAllPos;
}
bool hook_is_qkv(Hook h) {
  return h == Hook::Q || h == Hook::QAllPos || h == Hook::K || h == Hook::KAllPos || h == Hook::V || h == Hook::VAllPos;
}
bool hook_is_kv(Hook h) { return h == Hook::K || h == Hook::KAllPos || h == Hook::V || h == Hook::VAllPos; }

Hook hook_base(Hook h) {
  switch (h) {
    case Hook::ZAllPos: return Hook::Z;
    case Hook::QAllPos: return Hook::Q;
    case Hook::KAllPos: return Hook::K;
    case Hook::VAllPos: return Hook::V;
    case Hook::PatternAllPos: return Hook::Pattern;
    default: return h;
  }
}

std::string hook_tl_name(Hook h) {
  if (h == Hook::Z || h == Hook::ZAllPos) return "attn.hook_z";
  if (h == Hook::Q || h == Hook::QAllPos) return "attn.hook_q";
  if (h == Hook::K || h == Hook::KAllPos) return "attn.hook_k";
  if (h == Hook::V || h == Hook::VAllPos) return "attn.hook_v";
  if (hook_is_pattern(h)) return "attn.hook_pattern";
  if (h == Hook::MlpPost) return "mlp.hook_post";
  if (h == Hook::Router) return "mlp.hook_router";
  return "hook_" + hook_name(h);
}

}  // namespace phi3
