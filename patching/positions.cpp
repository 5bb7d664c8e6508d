#include "patching/positions.h"

#include <algorithm>
#include <sstream>

#include "runtime/error.h"

namespace phi3 {

namespace {

// One bound of an item: an integer, negative from the end; `dflt` when empty.
int bound(const std::string& s, int dflt, int n, const std::string& item, const std::string& option,
          const std::string& noun) {
  if (s.empty()) return dflt;
  size_t used = 0;
  long v = 0;
  try {
    v = std::stol(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || s.size() > 9)
    throw Error(option + ": '" + item + "' is not a " + noun + " or a range a:b (integers)");
  if (v < 0) v += n;
  return static_cast<int>(v);
}

}  // namespace

std::vector<int> parse_index_list(const std::string& spec, int n, const std::string& option, const std::string& noun,
                                  const std::string& extent) {
  std::vector<int> out;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const size_t colon = item.find(':');
    if (colon == std::string::npos) {
      const int p = bound(item, 0, n, item, option, noun);
      if (p < 0 || p >= n) throw Error(option + ": " + noun + " " + item + " is outside" + extent);
      out.push_back(p);
      continue;
    }
    if (item.find(':', colon + 1) != std::string::npos)
      throw Error(option + ": '" + item + "' has more than one ':' (ranges are a:b, without a step)");
    const int a = bound(item.substr(0, colon), 0, n, item, option, noun),
              b = bound(item.substr(colon + 1), n, n, item, option, noun);
    if (a < 0 || a >= n || b > n || b < 0) throw Error(option + ": range " + item + " goes outside" + extent);
    if (b <= a) throw Error(option + ": range " + item + " is empty (a:b means a <= i < b)");
    for (int p = a; p < b; ++p) out.push_back(p);
  }
  if (out.empty()) throw Error(option + ": no " + noun + " given");
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::vector<int> parse_positions(const std::string& spec, int T) {
  return parse_index_list(spec, T, "--positions", "position",
                          " the prompt (the prompts have T = " + std::to_string(T) + " positions, 0.." +
                              std::to_string(T - 1) + ")");
}

std::vector<int> parse_layers(const std::string& spec, int L) {
  return parse_index_list(spec, L, "--layers", "layer",
                          " the model (it has " + std::to_string(L) + " layers, 0.." + std::to_string(L - 1) + ")");
}

}  // namespace phi3
