// Verification against a reference dump made from `transformers` by tools/make_reference.py
// (format: data/reference/README.md): tokens, logits, every hook activation of both runs,
// gradients of the normalized metric on the corrupted run, and the TransformerLens-style
// patching results. Pad query rows are implementation-defined and are not compared.
#pragma once
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "runtime/backend.h"

namespace phi3 {

struct TensorCheck {
  // tokens | logits | activation | gradient | activation_patching | attribution_patching |
  // metric_value (--metric's, metrics.json) | edge_scores | circuit_metric | circuit_selection |
  // circuit_consistency
  std::string kind;
  std::string name;
  double max_abs = 0;  // worst |ours - reference|
  double max_ref = 0;  // max |reference|
  double tol = 0;
  bool relative = true;  // tolerance relative to max_ref (else absolute)
  bool ok = false;
  // Relative checks divide by the larger of max_ref and scale_floor (a magnitude below which
  // values are rounding noise of the quantity compared).
  double scale_floor = 0;
  double err() const {
    const double s = std::max(max_ref, scale_floor);
    return relative ? (s > 0 ? max_abs / s : max_abs) : max_abs;
  }
};

struct VerifyOptions {
  double act_tol = 1e-4;          // logits and activations, relative to the tensor's max magnitude
  double grad_tol = 1e-3;         // gradients, relative
  double patch_act_tol = 1e-4;    // activation patching, absolute (normalized metric)
  double patch_attr_tol = 1e-3;   // attribution patching, relative to the matrix's max magnitude
  bool patching = true;           // also run and compare the patching sweeps
  bool naive = false;             // naive sweep instead of the fast one
  // A hook with more activation-patching targets than this (mlp_post: L*T*F neurons) is
  // compared on a spread sample of about this many (every layer and position; 0: all).
  int64_t max_patch_targets = 0;
  bool circuits = true;           // also circuit discovery, where the dump has circuit.json
  double edge_score_tol = -1;     // EAP / EAP-IG scores, relative (< 0: patch_attr_tol)
  double circuit_tol = -1;        // exact circuit metric per row, normalized, absolute (< 0: patch_act_tol)
  // Also require our top-k choice on our own scores to pick the reference's edges (beyond
  // ties); off where rounding moves the scores by more than the gaps between them (bf16).
  bool own_selection = true;
  std::function<void(const std::string&)> log;
};

struct VerifyResult {
  std::string reference_dir, model_dir;
  std::vector<TensorCheck> checks;
  bool ok() const;
  // Worst check per kind.
  std::vector<TensorCheck> worst_by_kind() const;
};

VerifyResult verify_reference(Backend& be, const std::string& ref_dir, const VerifyOptions& opt = {});

}  // namespace phi3
