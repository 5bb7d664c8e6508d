#include "patching/positions.h"

#include <algorithm>
#include <sstream>

#include "runtime/error.h"

namespace phi3 {

namespace {

// One bound of an item: an integer, negative from the end; `dflt` when empty.
int bound(const std::string& s, int dflt, int T, const std::string& item) {
  if (s.empty()) return dflt;
  size_t used = 0;
  long v = 0;
  try {
    v = std::stol(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || s.size() > 9)
    throw Error("--positions: '" + item + "' is not a position or a range a:b (integers)");
  if (v < 0) v += T;
  return static_cast<int>(v);
}

}  // namespace

std::vector<int> parse_positions(const std::string& spec, int T) {
  std::vector<int> out;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const size_t colon = item.find(':');
    const std::string at_T = " (the prompts have T = " + std::to_string(T) + " positions, 0.." + std::to_string(T - 1) + ")";
    if (colon == std::string::npos) {
      const int p = bound(item, 0, T, item);
      if (p < 0 || p >= T) throw Error("--positions: position " + item + " is outside the prompt" + at_T);
      out.push_back(p);
      continue;
    }
    if (item.find(':', colon + 1) != std::string::npos)
      throw Error("--positions: '" + item + "' has more than one ':' (ranges are a:b, without a step)");
    const int a = bound(item.substr(0, colon), 0, T, item), b = bound(item.substr(colon + 1), T, T, item);
    if (a < 0 || a >= T || b > T || b < 0) throw Error("--positions: range " + item + " goes outside the prompt" + at_T);
    if (b <= a) throw Error("--positions: range " + item + " is empty (a:b means a <= t < b)");
    for (int p = a; p < b; ++p) out.push_back(p);
  }
  if (out.empty()) throw Error("--positions: no position given");
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace phi3
