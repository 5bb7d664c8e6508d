// run's inputs checked against the config and tokenizer alone (patching/experiment.h): the
// CLI calls it before the weights load, run_experiment again as its first step.
#include <algorithm>

#include "model/forward.h"
#include "patching/experiment.h"
#include "patching/positions.h"
#include "runtime/error.h"

namespace phi3 {

ExperimentInputs check_experiment_inputs(const Model& m, const ExperimentOptions& opt) {
  ExperimentInputs in;
  check_methods(opt);
  in.pairs = opt.pairs_text.empty() ? load_pairs(opt.pairs_file) : parse_pairs(opt.pairs_text, opt.pairs_file);
  check_tokenizable(in.pairs, m.tok, opt.pairs_file);
  if (opt.answer_first_token) in.answers_cut = use_first_answer_tokens(in.pairs, m.tok);
  check_pairs(in.pairs, m.tok, m.cfg.max_position_embeddings, opt.pairs_file, opt.add_bos, m.cfg.vocab_size,
              opt.mix);
  for (Hook h : opt.hooks) check_hook_supported(h, m.cfg);
  const int L = m.cfg.num_hidden_layers;
  if (!opt.layers.empty()) in.layers = parse_layers(opt.layers, L);
  auto in_layers = [&](int l) {
    return in.layers.empty() || std::binary_search(in.layers.begin(), in.layers.end(), l);
  };
  in.T = pair_batch_length(in.pairs, m.tok, opt.add_bos);
  if (in.T > m.cfg.max_position_embeddings)
    throw Error(opt.pairs_file + ": the longest prompt has " + std::to_string(in.T) +
                " tokens, more than the model's context of " + std::to_string(m.cfg.max_position_embeddings));
  if (opt.verify_top > 0) {
    int64_t nodes = 0;
    for (Hook h : opt.hooks)
      for (const PatchSpec& t : sweep_targets(h, L, in.T, hook_heads(h, m.cfg))) nodes += in_layers(t.layer);
    if (opt.verify_top > nodes)
      throw Error("--verify-top " + std::to_string(opt.verify_top) + " is more than the " + std::to_string(nodes) +
                  " nodes of the chosen hooks at T = " + std::to_string(in.T) +
                  (in.layers.empty() ? std::string() : " in the layers of --layers " + opt.layers));
  }
  if (!opt.positions.empty()) in.positions = parse_positions(opt.positions, in.T);
  return in;
}

}  // namespace phi3
