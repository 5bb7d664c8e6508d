// Position ranges for exact sweeps of a region (`run --positions 1500:1600,1700`): at long T
// exact patching of all L x T positions is quadratic in T, so a region is swept instead; and
// the same syntax for the layers of a sweep (`run --layers 0,2` or `1:3`).
#pragma once
#include <string>
#include <vector>

namespace phi3 {

// Parses a comma-separated list of indices and Python-style half-open ranges against a count
// n: "7", "3:9" (3..8), "1500:" (to the end), ":16", negatives counted from the end ("-1" the
// last, "-64:" the last 64). Returns the indices, ascending, without repeats. Throws naming
// `option` ("--positions") and the item that is malformed, out of [0, n) or an empty range;
// `noun` ("position") and `extent` (" (the prompts have T = 10 positions, 0..9)") word it.
std::vector<int> parse_index_list(const std::string& spec, int n, const std::string& option, const std::string& noun,
                                  const std::string& extent);

// --positions against a prompt length T.
std::vector<int> parse_positions(const std::string& spec, int T);

// --layers against a model of L layers ("0,2", "1:3", "-1" the last layer).
std::vector<int> parse_layers(const std::string& spec, int L);

}  // namespace phi3
