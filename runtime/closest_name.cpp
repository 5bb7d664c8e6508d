#include "runtime/closest_name.h"

#include <algorithm>
#include <cctype>
#include <climits>

namespace phi3 {

int edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<int>> d(n + 1, std::vector<int>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = static_cast<int>(i);
  for (size_t j = 0; j <= m; ++j) d[0][j] = static_cast<int>(j);
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      const int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

namespace {
std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
bool starts_with(const std::string& s, const std::string& p) { return s.size() >= p.size() && s.compare(0, p.size(), p) == 0; }
}  // namespace

std::string closest_name(const std::string& word, const std::vector<std::string>& candidates) {
  const std::string w = lower(word);
  if (w.empty()) return "";
  const int limit = std::max<int>(1, static_cast<int>(w.size()) / 3);
  std::string best;
  int best_d = INT_MAX;
  bool best_close = false;  // within the edit limit (beats a prefix match)
  for (const std::string& cand : candidates) {
    const std::string c = lower(cand);
    if (c.empty()) continue;
    const int d = edit_distance(w, c);
    const bool close = d <= limit && d < static_cast<int>(w.size()) && d < static_cast<int>(c.size());
    const bool prefix = w.size() >= 3 && (starts_with(c, w) || starts_with(w, c));
    if (!close && !prefix) continue;
    if (best.empty() || (close && !best_close) || (close == best_close && d < best_d)) {
      best = cand;
      best_d = d;
      best_close = close;
    }
  }
  return best;
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates, const std::string& before,
                         const std::string& after) {
  const std::string c = closest_name(word, candidates);
  return c.empty() ? std::string() : "; did you mean " + before + c + after + "?";
}

}  // namespace phi3
