"""Shared pieces of the PyTorch baselines (tl_loop.py, batched_torch.py).

- prompts: the engine's construction (DESIGN §2), via tools/make_reference.py's build_batches:
  pairs mixed both ways, BOS + SentencePiece ids, answers sp.encode(word)[0], left padding with the
  config's pad_token_id, attention_mask, position_ids = clamp(cumsum(mask) - 1, 0).
- hook points on transformers' Phi3ForCausalLM with TransformerLens names and semantics (DESIGN §4),
  at the places make_reference.py's `Hooked` uses: resid_pre = the decoder layer's input,
  attn_out = output of resid_attn_dropout (identity in eval), resid_mid = input of
  post_attention_layernorm (the same tensor is the MLP residual, so an in-place patch changes both),
  mlp_out = output of mlp, resid_post = the layer's output, z = input of o_proj ([R, T, H*HD]).
- pad query rows: z = 0 there in every run (what TransformerLens gives: its fully masked softmax rows
  become 0; also the engine's convention). Real rows never read pad rows, so this only pins down the
  values a patch copies from a pad position of one run into a real position of the other.
- the metric (DESIGN §3) and timing helpers.
"""

import argparse
import json
import os
import sys
import time
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(HERE)
ROOT = os.path.dirname(TOOLS)
BLOCK_HOOKS = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
ALL_HOOKS = BLOCK_HOOKS + ["z", "z_all_pos"]

sys.path.insert(0, TOOLS)
import families  # noqa: E402
try:
    import sentencepiece as spm  # noqa: F401
    HAVE_SP = True
    import make_reference as mr  # (build_batches, logit_diff)
except ImportError:
    # make_reference imports sentencepiece at module level; --ids-from needs no tokenizer. Import it
    # against a stand-in, then put sys.modules back (transformers probes for the real package).
    HAVE_SP = False
    import transformers.models.phi3.modeling_phi3  # noqa: F401  (before the stand-in: it probes)
    _prev = sys.modules.get("sentencepiece", False)
    sys.modules["sentencepiece"] = types.ModuleType("sentencepiece")
    try:
        import make_reference as mr
    finally:
        if _prev is False:
            del sys.modules["sentencepiece"]
        else:
            sys.modules["sentencepiece"] = _prev


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def base_args(description):
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "data/models/tiny-temporal-phi3"))
    ap.add_argument("--pairs", default=os.path.join(ROOT, "data/temporal_scope_for_attribution_patching.json"))
    ap.add_argument("--hooks", default="resid_pre,attn_out,mlp_out",
                    help="comma-separated: " + ", ".join(ALL_HOOKS) + " [resid_pre,attn_out,mlp_out]")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                    help="model dtype [bf16 on cuda, fp32 on cpu]")
    ap.add_argument("--fp32", action="store_true", help="same as --dtype fp32")
    ap.add_argument("--json", required=True, help="output JSON file")
    ap.add_argument("--ids-from", default=None,
                    help="take token ids from a `phi3patch run` results.json instead of tokenizing "
                         "(for machines without sentencepiece)")
    ap.add_argument("--layers", type=int, default=0,
                    help="sweep only the first N layers (others null; seconds extrapolated in "
                         "'extrapolated_seconds') [all]")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads [torch's default]")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time each sweep N times and keep the fastest (noisy shared machines) [1]")
    return ap


def finish_args(args):
    if args.fp32:
        args.dtype = "fp32"
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    args.hooks = [h.strip() for h in args.hooks.split(",") if h.strip()]
    for h in args.hooks:
        if h not in ALL_HOOKS:
            sys.exit(f"--hooks: unknown hook {h!r} (known: {', '.join(ALL_HOOKS)})")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args


# ----------------------------------------------------------------------------------------------
# Model, prompts
# ----------------------------------------------------------------------------------------------
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def load_model(model_dir, device, dtype, attn_implementation):
    """Any supported family (tools/families.py), from its config.json."""
    model = families.load_model(model_dir, DTYPES[dtype], attn_implementation)
    return model.to(device)


class _SpTok:
    """What make_reference.build_batches needs: prompt(text) -> ids, answer(word) -> id, pad_id,
    add_bos. BOS as the engine's default for a SentencePiece checkpoint: tokenizer_config.json's
    add_bos_token where it says, else yes."""

    def __init__(self, model_dir, pad_id):
        import sentencepiece
        self.sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
        self.pad_id = pad_id
        self.bos_id = self.sp.bos_id()
        self.add_bos = True
        cfg_path = os.path.join(model_dir, "tokenizer_config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                self.add_bos = bool(json.load(f).get("add_bos_token", True))

    def prompt(self, text):
        return ([self.bos_id] if self.add_bos else []) + self.sp.encode(text)

    def answer(self, word):
        return self.sp.encode(word)[0]


class _IdsTok:
    """The same from a `phi3patch run` results.json (its prompts and padded token rows)."""

    def __init__(self, results_json, pad_id):
        with open(results_json) as f:
            r = json.load(f)
        self.pad_id = pad_id
        self.add_bos = bool(r.get("bos", True))  # the rows below already hold it
        self.ids, self.ans = {}, {}
        for i, p in enumerate(r["prompts"]):
            for which in ("clean", "corrupted"):
                row = r["tokens"][i][which]  # the padded row of row i of the batch
                k = 0
                while k < len(row) and row[k] == pad_id:
                    k += 1
                self.ids[p[which]] = row[k:]
            self.ans[p["answer"].replace("\u2581", "")] = p["answer_id"]
            self.ans[p["other"].replace("\u2581", "")] = p["other_id"]

    def prompt(self, text):
        return self.ids[text]

    def answer(self, word):
        return self.ans[word]


def load_batches(args, model, device):
    """-> make_reference.build_batches(...) dict with the tensors moved to `device`, plus
    ans/oth [B] long tensors."""
    pad_id = model.config.pad_token_id
    if pad_id is None:
        pad_id = model.config.eos_token_id
    if args.ids_from:
        tok = _IdsTok(args.ids_from, pad_id)
    else:
        if not HAVE_SP:
            sys.exit("sentencepiece is not importable: pip install sentencepiece, or pass --ids-from results.json")
        tok = _SpTok(args.model, pad_id) if os.path.exists(os.path.join(args.model, "tokenizer.model")) \
            else mr.BpeTok(args.model)
        tok.pad_id = pad_id  # the config's, as the engine pads
    with open(args.pairs) as f:
        pairs = json.load(f)
    b = mr.build_batches(tok, pairs)
    for run in ("clean", "corrupted"):
        b[run] = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b[run].items()}
        b[run]["qmask"] = b[run]["mask"].bool()
    b["ans"] = torch.tensor(b["answer_ids"], device=device)
    b["oth"] = torch.tensor(b["other_ids"], device=device)
    return b


def logit_diff(logits, ans, oth):
    """[R, T or 1, V] logits -> [R] fp32 logit differences at the last position (R = n * B: the
    answers repeat)."""
    B = ans.shape[0]
    R = logits.shape[0]
    a = ans.repeat(R // B)
    o = oth.repeat(R // B)
    return mr.logit_diff(logits[:, -1:].float(), a, o)


# ----------------------------------------------------------------------------------------------
# Hook points
# ----------------------------------------------------------------------------------------------
class HookPoints:
    """TransformerLens-named hook points on a Phi3ForCausalLM. `add(name, l, fn)` registers
    fn(t) -> t (may modify t in place) at hook `name` of layer `l` and returns a removable handle.
    z pad query rows are zeroed by a permanent hook (see the module docstring); set `qmask`
    ([R, T] bool) before each forward."""

    def __init__(self, model):
        self.model = model
        cfg = model.config
        self.layers = model.model.layers
        self.L = cfg.num_hidden_layers
        self.H = cfg.num_attention_heads
        self.HD = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.qmask = None
        for layer in self.layers:
            layer.self_attn.o_proj.register_forward_pre_hook(self._zero_pad_z)

    def _zero_pad_z(self, mod, args):
        z = args[0]
        return (torch.where(self.qmask[:, :, None], z, torch.zeros((), dtype=z.dtype, device=z.device)),) + args[1:]

    def add(self, name, l, fn):
        layer = self.layers[l]
        if name == "resid_pre":
            def pre(mod, args, kwargs):
                if args:
                    return (fn(args[0]),) + tuple(args[1:]), kwargs
                return args, dict(kwargs, hidden_states=fn(kwargs["hidden_states"]))
            return layer.register_forward_pre_hook(pre, with_kwargs=True)
        if name in ("resid_mid", "z"):
            mod = layer.post_attention_layernorm if name == "resid_mid" else layer.self_attn.o_proj

            def pre1(mod, args):
                t = fn(args[0])
                assert name != "resid_mid" or t is args[0], "resid_mid hooks must work in place"
                return (t,) + tuple(args[1:])
            return mod.register_forward_pre_hook(pre1)
        mod = {"attn_out": families.attn_residual_module(layer), "mlp_out": layer.mlp, "resid_post": layer}[name]

        def post(mod, inp, out):
            if isinstance(out, tuple):  # decoder layers of transformers 4.x return tuples
                return (fn(out[0]),) + out[1:]
            return fn(out)
        return mod.register_forward_hook(post)

    def forward(self, run, rows=1, logits_to_keep=0, inputs_embeds=None):
        """Forward of batch `run` (a build_batches row set) repeated `rows` times."""
        tokens, mask, pos = run["tokens"], run["mask"], run["pos"]
        if rows > 1:
            tokens, mask, pos = tokens.repeat(rows, 1), mask.repeat(rows, 1), pos.repeat(rows, 1)
        self.qmask = mask.bool()
        kw = dict(attention_mask=mask, position_ids=pos, use_cache=False)
        if logits_to_keep:
            kw["logits_to_keep"] = logits_to_keep
        if inputs_embeds is not None:
            kw["inputs_embeds"] = inputs_embeds
        else:
            kw["input_ids"] = tokens
        return self.model(**kw).logits

    def capture(self, run, names, grad=False):
        """Forward of `run` storing every layer's activation at `names` (z_all_pos -> z).
        Returns (logits, {name: [L tensors]}). grad=True: the run is differentiable with respect
        to the activations (embeddings require grad)."""
        names = sorted({"z" if n == "z_all_pos" else n for n in names})
        cache = {n: [None] * self.L for n in names}
        handles = []
        for n in names:
            for l in range(self.L):
                def store(t, n=n, l=l):
                    cache[n][l] = t
                    return t
                handles.append(self.add(n, l, store))
        try:
            if grad:
                emb = self.model.model.embed_tokens(run["tokens"]).detach().requires_grad_(True)
                logits = self.forward(run, logits_to_keep=1, inputs_embeds=emb)
            else:
                with torch.no_grad():
                    logits = self.forward(run)
        finally:
            for h in handles:
                h.remove()
        return logits, cache


def result_shape(hook, L, T, H):
    return {"z": (L, T, H), "z_all_pos": (L, H)}.get(hook, (L, T))


# ----------------------------------------------------------------------------------------------
# Timing, output
# ----------------------------------------------------------------------------------------------
def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


class Timer:
    def __init__(self, device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        sync(self.device)
        self.seconds = time.perf_counter() - self.t0


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def base_metrics(hp, b):
    """Clean and corrupted logit differences (means as Python floats and per-prompt lists)."""
    with torch.no_grad():
        ld_clean = logit_diff(hp.forward(b["clean"], logits_to_keep=1), b["ans"], b["oth"])
        ld_corr = logit_diff(hp.forward(b["corrupted"], logits_to_keep=1), b["ans"], b["oth"])
    return ld_clean, ld_corr


def tolist(x):
    """nested lists with None for NaN (cells not computed)."""
    if isinstance(x, torch.Tensor):
        x = x.double().cpu().tolist()
    if isinstance(x, list):
        return [tolist(v) for v in x]
    return None if x != x else float(x)


def write_json(path, args, name, model, b, ld_clean, ld_corr, hooks_out, extra):
    cfg = model.config
    out = {
        "baseline": name,
        "device": device_name(args.device),
        "dtype": args.dtype,
        "model": args.model,
        "pairs": args.pairs,
        "T": b["T"],
        "B": b["B"],
        "L": cfg.num_hidden_layers,
        "H": cfg.num_attention_heads,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "attn_implementation": getattr(cfg, "_attn_implementation", None),
        "clean_logit_diff": float(ld_clean.mean()),
        "corrupted_logit_diff": float(ld_corr.mean()),
        "direction": "denoise",
        "repeat": getattr(args, "repeat", 1),
        "hooks": hooks_out,
    }
    out.update(extra)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    log(f"wrote {path}")


def hook_result(name, hook, vals, L, T, H, n_layers, seconds, calls, **extra):
    """The JSON entry of one swept hook (values NaN beyond the swept layers) and its log line."""
    shape = result_shape(hook, L, T, H)
    full = torch.full((L,) + shape[1:], float("nan"), dtype=torch.float64)
    full[:n_layers] = vals.double().view((n_layers,) + shape[1:])
    entry = {"seconds": seconds, "n_forward_calls": calls, **extra,
             "extrapolated_seconds": seconds * L / n_layers, "layers_swept": n_layers, "values": tolist(full)}
    log(f"[{name}] {hook}: {seconds:.4f} s, {calls} forward calls"
        + (f" for {extra['patches']} patches" if "patches" in extra else "")
        + (f" (first {n_layers} of {L} layers; all layers ~{seconds * L / n_layers:.2f} s)" if n_layers < L else ""))
    return entry
