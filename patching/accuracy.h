// Accuracy of a model on the CAA-style temporal dataset (data/raw/temporal_scope_caa.json):
// each item's goal in the patching template, answered ` short` or ` long` by the sign of
// the last-position logit difference.
#pragma once
#include <string>
#include <vector>

#include "model/model.h"

namespace phi3 {

struct AccuracyResult {
  int items = 0;
  int correct = 0;
  double accuracy() const { return items ? double(correct) / items : 0.0; }
};

// The template of the seed prompts.
std::string temporal_prompt(const std::string& goal);

// The dataset's items of `split` tokenized (the tokenizer alone: m may come from
// load_model_meta); throws naming a bad file, item or split before any weight is needed.
struct AccuracyItems {
  std::vector<std::vector<int>> rows;  // prompt ids
  std::vector<int> is_short;           // 1: the answer is " short"
  int short_id = -1, long_id = -1;
};
AccuracyItems accuracy_items(const Model& m, const std::string& dataset_path, const std::string& split);
AccuracyResult dataset_accuracy(Backend& be, const Model& m, const AccuracyItems& items, int batch_size = 64);

// split: "train", "heldout" or "all".
AccuracyResult dataset_accuracy(Backend& be, const Model& m, const std::string& dataset_path, const std::string& split,
                                int batch_size = 64);

}  // namespace phi3
