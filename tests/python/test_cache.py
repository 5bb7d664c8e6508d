"""run_with_cache and logit_diff: activations under TransformerLens names, equal to
transformers' (the Qwen2 reference's dumps), read-only views that stay valid, DLPack."""
import json
import os
import struct

import numpy as np
import pytest

import phi3patch
from conftest import SOURCE

REF = os.path.join(SOURCE, "data", "reference", "rand-qwen2-bias-swa")


def read_safetensors(path, prefix):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for k, v in header.items():
            if k.startswith(prefix) and v["dtype"] == "F32":
                a, b = v["data_offsets"]
                f.seek(base + a)
                out[k[len(prefix):]] = np.frombuffer(f.read(b - a), dtype=np.float32).reshape(v["shape"])
    return out


def test_activations_equal_transformers_on_qwen2():
    with open(os.path.join(REF, "reference.json"), encoding="utf-8") as f:
        ref = json.load(f)
    m = phi3patch.load(os.path.join(REF, "model"), device="cpu")
    acts = read_safetensors(os.path.join(REF, "reference.safetensors"), "clean.")
    names = sorted(n for n in acts if n != "logits")  # logits are run_with_cache's first value
    logits, cache = m.run_with_cache(ref["clean_prompts"], names, bos=ref["bos"])
    assert cache.pad.tolist() == ref["clean_pad"]
    assert [row[p:] for row, p in zip(cache.tokens.tolist(), ref["clean_pad"])] == ref["clean_token_ids"]
    checked = 0
    for n in names:
        a, b = cache[n], acts[n]
        assert a.shape == b.shape, n
        scale = max(1e-6, float(np.abs(b).max()))
        assert float(np.abs(a - b).max()) <= 2e-5 * scale, (n, float(np.abs(a - b).max()), scale)
        checked += 1
    assert checked >= 30  # q, k, v, rot_q, rot_k, z, pattern and the block hooks of every layer
    assert logits.shape == (4, ref["T"], ref["dims"]["V"])
    # The logit differences at the last position equal transformers' (and Model.logit_diff's).
    ld = logits[np.arange(4), -1, ref["answer_ids"]] - logits[np.arange(4), -1, ref["other_ids"]]
    np.testing.assert_allclose(ld, ref["clean_logit_diff_per_prompt"], rtol=1e-5, atol=1e-5)


def test_views_are_read_only_and_outlive_the_call(model):
    logits, cache = model.run_with_cache(["The goal is to", "Water the plants"], ["blocks.1.attn.hook_k",
                                                                                 "blocks.2.mlp.hook_post"])
    k = cache["blocks.1.attn.hook_k"]
    assert k.shape == (2, logits.shape[1], 4, 16) and k.dtype == np.float32
    assert not k.flags.writeable and not logits.flags.writeable
    with pytest.raises(ValueError):
        k[0, 0, 0, 0] = 1.0
    before = k.copy()
    del logits, cache
    model.patch(hooks="resid_pre", progress=False)  # other work on the model meanwhile
    np.testing.assert_array_equal(k, before)  # the view keeps its forward pass alive
    assert cache_free_mlp_post_is_fp32(model)


def cache_free_mlp_post_is_fp32(model):
    _, c = model.run_with_cache("The goal", "blocks.0.mlp.hook_post")
    return c["blocks.0.mlp.hook_post"].shape[-1] == 128


def test_dlpack_round_trip_without_copy(model):
    _, cache = model.run_with_cache(["The goal is"], ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_q"])
    for name in ("blocks.0.hook_resid_pre", "blocks.0.attn.hook_q"):
        a = cache[name]
        b = np.from_dlpack(a)
        assert np.shares_memory(a, b) and b.strides == a.strides
        np.testing.assert_array_equal(a, b)
    torch = pytest.importorskip("torch", reason="torch not installed: the DLPack round trip to torch is not run")
    t = torch.from_dlpack(cache["blocks.0.attn.hook_q"])
    np.testing.assert_array_equal(t.numpy(), cache["blocks.0.attn.hook_q"])


def test_logit_diff_matches_patch(model):
    r = model.patch(hooks="resid_pre", methods="attribution", progress=False)
    p = r.prompts
    ld = model.logit_diff([x["clean"] for x in p], [x["answer"].lstrip("▁") for x in p],
                          [x["other"].lstrip("▁") for x in p])
    assert ld.dtype == np.float32 and ld.shape == (len(p),)
    np.testing.assert_allclose(ld, [x["clean_logit_diff"] for x in p], rtol=0, atol=1e-5)


def softmax_rows(s):
    m = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    return e / np.sum(e, axis=-1, keepdims=True)


@pytest.mark.parametrize("ref_name", ["rand-qwen2-bias-swa", "rand-gemma2-softcap"])
def test_every_hook_is_cached_and_scores_give_the_pattern(ref_name):
    """names_filter=None caches every hook, as TransformerLens does; the attention scores (sliding
    windows, soft-capping, pad keys masked) give the engine's pattern through a softmax, the
    normalized final residual has unit RMS, hook_embed is the first block's input."""
    ref_dir = os.path.join(SOURCE, "data", "reference", ref_name)
    with open(os.path.join(ref_dir, "reference.json"), encoding="utf-8") as f:
        ref = json.load(f)
    m = phi3patch.load(os.path.join(ref_dir, "model"), device="cpu")
    logits, cache = m.run_with_cache(ref["clean_prompts"], bos=ref["bos"])
    L = m.n_layers
    assert len(cache) == 2 + 14 * L
    assert "pad" not in cache and "tokens" not in cache
    assert cache.pad.tolist() == ref["clean_pad"] and cache.tokens.shape == logits.shape[:2]
    B, T = cache.tokens.shape
    checked = 0
    for l in range(L):
        s, p = cache["attn_scores", l], cache[f"blocks.{l}.attn.hook_pattern"]
        assert s.shape == p.shape == (B, m.n_heads, T, T)
        for b in range(B):
            real = slice(int(cache.pad[b]), T)  # pad query rows see no key
            np.testing.assert_allclose(softmax_rows(s[b][:, real]), p[b][:, real], rtol=0, atol=2e-6)
            assert np.all(np.isneginf(s[b][:, real][p[b][:, real] == 0]) | (p[b][:, real][p[b][:, real] == 0] == 0))
            checked += 1
        assert np.isneginf(s[:, :, 0, 1:]).all()  # no query sees a later key
    assert checked == L * B
    if any(m.config.get("layer_types", [])) or m.config.get("sliding_window"):
        assert any(m._e.attn_params(l)[2] > 0 for l in range(L))  # a windowed layer was among them
    x = cache["ln_final.hook_normalized"]
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1))
    np.testing.assert_allclose(rms, 1.0, rtol=0, atol=1e-3)  # eps is tiny against these residuals
    np.testing.assert_array_equal(cache["hook_embed"], cache["blocks.0.hook_resid_pre"])
    np.testing.assert_array_equal(cache["resid_post", L - 1], cache[f"blocks.{L - 1}.hook_resid_post"])


def test_names_filter_forms_and_unknown_names(model):
    _, c = model.run_with_cache("The goal is", names_filter=lambda n: n.endswith("hook_z"))
    assert sorted(c) == [f"blocks.{l}.attn.hook_z" for l in range(model.n_layers)]
    _, c = model.run_with_cache("The goal is", ["resid_pre", "attn.hook_z"])  # short names: every layer
    assert sorted(c) == sorted([f"blocks.{l}.hook_resid_pre" for l in range(model.n_layers)] +
                               [f"blocks.{l}.attn.hook_z" for l in range(model.n_layers)])
    _, c = model.run_with_cache("The goal is", "blocks.1.hook_resid_pre")
    assert list(c) == ["blocks.1.hook_resid_pre"]
    _, c = model.run_with_cache("The goal is", names=["hook_embed"])  # the old keyword still works
    assert list(c) == ["hook_embed"]
    with pytest.raises(ValueError, match="did you mean 'blocks.1.hook_resid_pre'"):
        model.run_with_cache("The goal is", ["blocks.1.hook_resid_pr"])
    with pytest.raises(KeyError, match="did you mean 'blocks.1.hook_resid_pre'"):
        c = model.run_with_cache("The goal is", ["blocks.1.hook_resid_pre"])[1]
        c["blocks.1.hook_resid_pr"]
    with pytest.raises(TypeError, match="did you mean 'names_filter'"):
        model.run_with_cache("The goal is", name_filter=["hook_embed"])
    assert c.str_tokens[0][0] == model.to_str_tokens("The goal is")[0] == "<s>"
    assert model.cfg.n_layers == model.n_layers and model.cfg.d_head == model.config["head_dim"]


def test_scores_and_normalized_agree_on_numpy_and_torch():
    """CUDA caches are torch tensors: the torch path of the computed hooks equals the numpy one."""
    torch = pytest.importorskip("torch", reason="torch not installed: the CUDA caches' torch path is not run")
    from phi3patch import _cache
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 7, 4, 8)).astype(np.float32)
    k = rng.standard_normal((2, 7, 2, 8)).astype(np.float32)
    for scale, cap, window in ((0.35, 0.0, 0), (0.35, 5.0, 3)):
        a = _cache.attn_scores(q, k, [0, 2], scale, cap, window)
        b = _cache.attn_scores(torch.from_numpy(q), torch.from_numpy(k), [0, 2], scale, cap, window).numpy()
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b))
        np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], rtol=0, atol=1e-6)
    x = rng.standard_normal((2, 7, 16)).astype(np.float32)
    np.testing.assert_allclose(_cache.normalized(x, 1e-5), _cache.normalized(torch.from_numpy(x), 1e-5).numpy(),
                               rtol=0, atol=1e-6)
