// `phi3patch verify --reference DIR`: compare with a transformers reference dump.
#include <cstdio>
#include <iostream>

#include "patching/cli/args.h"
#include "patching/cli/commands.h"
#include "patching/verify.h"
#include "runtime/error.h"

namespace phi3 {

int cmd_verify(const Args& a) {
  if (!a.has("reference")) throw Error("verify: --reference DIR is required (e.g. data/reference/tiny-temporal)");
  auto be = make_backend(a.get("device", "auto"), a.has("fp32"));
  VerifyOptions opt;
  opt.naive = a.has("naive");
  opt.patching = !a.has("no-patching");
  if (be->kind() == DeviceKind::CUDA && !a.has("fp32")) {
    // bf16 weights: report against looser bounds (bf16 keeps 8 bits of mantissa).
    opt.act_tol = 3e-2;
    opt.grad_tol = 5e-2;
    opt.patch_act_tol = 5e-2;
    opt.patch_attr_tol = 5e-2;
  }
  opt.log = [](const std::string& s) { std::cerr << "[verify] " << s << std::endl; };
  VerifyResult r = verify_reference(*be, a.get("reference", ""), opt);
  auto print = [](const TensorCheck& c) {
    std::printf("  %-4s %-22s %-48s max_abs=%.3g max_ref=%.3g %s=%.3g (tol %.1g)\n", c.ok ? "ok" : "FAIL",
                c.kind.c_str(), c.name.c_str(), c.max_abs, c.max_ref, c.relative ? "rel" : "abs", c.err(), c.tol);
  };
  std::printf("reference %s (model %s) on %s: %zu tensors compared\n", r.reference_dir.c_str(), r.model_dir.c_str(),
              be->name().c_str(), r.checks.size());
  std::printf("worst per kind:\n");
  for (const auto& c : r.worst_by_kind()) print(c);
  int failed = 0;
  for (const auto& c : r.checks) {
    if (!c.ok) ++failed;
    if (a.has("verbose") || !c.ok) print(c);
  }
  std::printf("%s: %d of %zu checks failed\n", r.ok() ? "PASS" : "FAIL", failed, r.checks.size());
  return r.ok() ? 0 : 1;
}

}  // namespace phi3
