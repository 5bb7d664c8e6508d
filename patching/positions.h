// Position ranges for exact sweeps of a region (`run --positions 1500:1600,1700`): at long T
// exact patching of all L x T positions is quadratic in T, so a region is swept instead.
#pragma once
#include <string>
#include <vector>

namespace phi3 {

// Parses a comma-separated list of positions and Python-style half-open ranges against a
// prompt length T: "7", "3:9" (3..8), "1500:" (to the end), ":16", negatives counted from the
// end ("-1" the last position, "-64:" the last 64). Returns the positions, ascending, without
// repeats. Throws naming the item that is malformed, out of [0, T) or an empty range.
std::vector<int> parse_positions(const std::string& spec, int T);

}  // namespace phi3
