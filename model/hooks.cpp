#include "model/hooks.h"

#include "runtime/error.h"

namespace phi3 {

std::vector<Hook> all_hooks() {
  return {Hook::ResidPre, Hook::ResidMid, Hook::ResidPost, Hook::AttnOut,
          Hook::MlpOut,   Hook::Z,        Hook::ZAllPos};
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
  }
  return "?";
}

Hook parse_hook(const std::string& name) {
  for (Hook h : all_hooks())
    if (hook_name(h) == name) return h;
  std::string known;
  for (Hook h : all_hooks()) known += (known.empty() ? "" : ", ") + hook_name(h);
  throw Error("unknown hook '" + name + "' (known: " + known + ")");
}

std::vector<Hook> parse_hook_list(const std::string& list) {
  std::vector<Hook> out;
  if (list == "none") return out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    std::string item = list.substr(start, end - start);
    if (!item.empty()) out.push_back(parse_hook(item));
    start = end + 1;
  }
  return out;
}

bool hook_is_per_head(Hook h) { return h == Hook::Z || h == Hook::ZAllPos; }

}  // namespace phi3
