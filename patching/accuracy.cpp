#include "patching/accuracy.h"

#include <nlohmann/json.hpp>

#include "model/forward.h"
#include "runtime/closest_name.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

std::string temporal_prompt(const std::string& goal) {
  return "The goal is to " + goal + ". Is this a short-term or long-term goal? The answer is:";
}

AccuracyItems accuracy_items(const Model& m, const std::string& path, const std::string& split) {
  if (split != "train" && split != "heldout" && split != "all")
    throw Error("--split: expected train, heldout or all, got '" + split + "'" +
                did_you_mean(split, {"train", "heldout", "all"}));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path, "dataset"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  if (!j.is_array()) throw Error(path + ": expected a list of items");
  AccuracyItems items;
  items.short_id = m.tok.answer_token("short");
  items.long_id = m.tok.answer_token("long");
  std::vector<std::vector<int>>& rows = items.rows;
  std::vector<int>& is_short = items.is_short;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& it = j[i];
    if (!it.is_object() || !it.contains("goal") || !it.contains("horizon") || !it["goal"].is_string() ||
        !it["horizon"].is_string())
      throw Error(path + ": item " + std::to_string(i) + " lacks string keys \"goal\" and \"horizon\"");
    if (split != "all" && it.value("split", "") != split) continue;
    rows.push_back(m.tok.encode(temporal_prompt(it["goal"].get<std::string>()), true));
    is_short.push_back(it["horizon"].get<std::string>() == "short");
  }
  return items;
}

AccuracyResult dataset_accuracy(Backend& be, const Model& m, const std::string& path, const std::string& split,
                                int batch_size) {
  return dataset_accuracy(be, m, accuracy_items(m, path, split), batch_size);
}

AccuracyResult dataset_accuracy(Backend& be, const Model& m, const AccuracyItems& items, int batch_size) {
  const std::vector<std::vector<int>>& rows = items.rows;
  const std::vector<int>& is_short = items.is_short;
  const int short_id = items.short_id, long_id = items.long_id;
  AccuracyResult r;
  for (size_t s = 0; s < rows.size(); s += batch_size) {
    std::vector<std::vector<int>> sub(rows.begin() + s, rows.begin() + std::min(rows.size(), s + batch_size));
    Batch b = make_batch(sub, m.cfg.pad_token_id);
    ForwardOptions fo;
    fo.keep_pattern = false;
    ForwardState st = forward(be, m, b, fo);
    std::vector<int32_t> ans(b.B, short_id), oth(b.B, long_id);
    LogitDiff ld = logit_diff(be, m, st, ans, oth);
    for (int k = 0; k < b.B; ++k) {
      bool pred_short = ld.per_row[k] > 0;
      r.correct += pred_short == static_cast<bool>(is_short[s + k]);
      ++r.items;
    }
  }
  return r;
}

}  // namespace phi3
