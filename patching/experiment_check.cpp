// run's inputs checked against the config and tokenizer alone (patching/experiment.h): the
// CLI calls it before the weights load, run_experiment again as its first step.
#include "model/forward.h"
#include "patching/experiment.h"
#include "patching/positions.h"
#include "runtime/error.h"

namespace phi3 {

ExperimentInputs check_experiment_inputs(const Model& m, const ExperimentOptions& opt) {
  ExperimentInputs in;
  check_methods(opt);
  in.pairs = opt.pairs_text.empty() ? load_pairs(opt.pairs_file) : parse_pairs(opt.pairs_text, opt.pairs_file);
  if (opt.answer_first_token) in.answers_cut = use_first_answer_tokens(in.pairs, m.tok);
  check_pairs(in.pairs, m.tok, m.cfg.max_position_embeddings, opt.pairs_file, opt.add_bos, m.cfg.vocab_size);
  in.T = pair_batch_length(in.pairs, m.tok, opt.add_bos);
  if (in.T > m.cfg.max_position_embeddings)
    throw Error(opt.pairs_file + ": the longest prompt has " + std::to_string(in.T) +
                " tokens, more than the model's context of " + std::to_string(m.cfg.max_position_embeddings));
  if (opt.verify_top > 0) {
    int64_t nodes = 0;
    for (Hook h : opt.hooks)
      nodes += static_cast<int64_t>(
          sweep_targets(h, m.cfg.num_hidden_layers, in.T, hook_heads(h, m.cfg)).size());
    if (opt.verify_top > nodes)
      throw Error("--verify-top " + std::to_string(opt.verify_top) + " is more than the " + std::to_string(nodes) +
                  " nodes of the chosen hooks at T = " + std::to_string(in.T));
  }
  if (!opt.positions.empty()) in.positions = parse_positions(opt.positions, in.T);
  return in;
}

}  // namespace phi3
