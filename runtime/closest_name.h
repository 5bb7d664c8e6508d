// "Did you mean ...?": the valid name closest to a misspelt one (commands, options, hooks,
// methods, metrics, shapes, pairs keys). One helper so every message suggests the same way.
#pragma once
#include <string>
#include <vector>

namespace phi3 {

// Optimal-string-alignment (Damerau-Levenshtein) distance: insertions, deletions,
// substitutions and swaps of two neighbours cost 1 each. Case-sensitive.
int edit_distance(const std::string& a, const std::string& b);

// The candidate closest to `word` (case-insensitive), or "" when none is close: within
// max(1, |word| / 3) edits (never as many edits as either name has characters), or, for a
// word of 3 or more characters, a prefix of a candidate (or a candidate a prefix of it).
// Ties go to the smaller distance, then to the earlier candidate.
std::string closest_name(const std::string& word, const std::vector<std::string>& candidates);

// "; did you mean X?" for closest_name's answer, "" when there is none. `prefix` is put
// before the suggestion ("--" for options, "\"" ... for quoted keys: the caller decorates).
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates,
                         const std::string& before = "", const std::string& after = "");

}  // namespace phi3
