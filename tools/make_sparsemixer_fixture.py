"""tests/data/moe/sparsemixer.json: PhiMoE's router (transformers' modeling_phimoe.sparsemixer,
inference mode) on seeded random logits, with d gates / d logits by autograd for seeded random
d gates: the reference of the engine's moe_sparsemixer op (tests/cpu/test_moe_ops.cpp).
Deterministic: a second run writes the same file."""
import json
import os

import torch
from transformers.models.phimoe.modeling_phimoe import sparsemixer

torch.manual_seed(0)
cases = []
for E, eps, scale in ((16, 0.01, 2.0), (16, 0.2, 2.0), (4, 0.01, 0.5), (8, 0.05, 0.05)):
    N = 24
    g = torch.Generator().manual_seed(E * 1000 + int(eps * 1000))
    logits = (scale * torch.randn(N, E, generator=g)).float()
    logits[0, 1] = logits[0, 0]  # an exact tie for the first expert
    logits = logits.requires_grad_(True)
    gates, ids = sparsemixer(logits, jitter_eps=eps, training=False, top_k=2)
    dg = torch.randn(N, 2, generator=g).float()
    (gates * dg).sum().backward()
    cases.append({"N": N, "E": E, "jitter_eps": eps, "logits": logits.detach().flatten().tolist(),
                  "ids": ids.flatten().tolist(), "gates": gates.detach().flatten().tolist(),
                  "dgates": dg.flatten().tolist(), "dlogits": logits.grad.flatten().tolist()})
out = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "moe", "sparsemixer.json")
with open(out, "w") as f:
    json.dump({"generator": "tools/make_sparsemixer_fixture.py", "cases": cases}, f)
    f.write("\n")
print("wrote", out)
