"""phi3patch.load by Hugging Face hub id, from a cache layout built around the embedded model
(blobs named by hash, snapshot files symlinked to them, two revisions), as the hub writes it."""
import hashlib
import os

import pytest

import phi3patch
from phi3patch import _hub
from conftest import EMBEDDED

REPO = "acme/tiny-temporal"
FILES = sorted(os.listdir(EMBEDDED))


def make_cache(root, repo=REPO, drop_in_other=("tokenizer.model",)):
    """<root>/models--acme--tiny-temporal with refs/main -> commit A (every file) and refs/other
    -> commit B (the same blobs, some files missing)."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True)
    (folder / "refs").mkdir()
    commits = {"main": "a" * 40, "other": "b" * 40}
    for name in FILES:
        if not os.path.exists(os.path.join(EMBEDDED, name)):
            continue
        data = open(os.path.join(EMBEDDED, name), "rb").read()
        blob = hashlib.sha256(data).hexdigest()
        (folder / "blobs" / blob).write_bytes(data)
        for ref, commit in commits.items():
            if ref == "other" and name in drop_in_other:
                continue
            snap = folder / "snapshots" / commit
            snap.mkdir(parents=True, exist_ok=True)
            (snap / name).symlink_to(os.path.join("..", "..", "blobs", blob))
    for ref, commit in commits.items():
        (folder / "refs" / ref).write_text(commit)
    return folder, commits


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    folder, commits = make_cache(root)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root, folder, commits


def test_hub_id_loads_from_the_cache(cache, capsys):
    root, folder, commits = cache
    m = phi3patch.load(REPO, device="cpu")
    snap = str(folder / "snapshots" / commits["main"])
    assert m.dir == snap
    assert m.source == f"{REPO} -> {snap}"
    assert f"phi3patch: model {REPO} -> {snap}" in capsys.readouterr().out
    ref = phi3patch.load(EMBEDDED, device="cpu", verbose=False)
    prompts = ["The goal is to make one cup of cappuccino. Is this a short-term or long-term goal? The answer is:"]
    assert m.logit_diff(prompts, ["short"], ["long"]).tolist() == ref.logit_diff(prompts, ["short"], ["long"]).tolist()


def test_revisions_hashes_and_repo_folders(cache):
    root, folder, commits = cache
    other = str(folder / "snapshots" / commits["other"])
    assert _hub.resolve(REPO + "@other").dir == other
    assert _hub.resolve(REPO + "@" + commits["other"]).dir == other
    assert _hub.resolve(REPO + "@" + commits["other"][:8]).dir == other  # a hash prefix
    assert _hub.resolve(str(folder)).dir == str(folder / "snapshots" / commits["main"])
    with pytest.raises(phi3patch.Error, match="revision 'v2'"):
        _hub.resolve(REPO + "@v2", download=False)
    # The snapshot of "other" lacks the tokenizer: it loads (pre-tokenized pairs run there), and
    # text is refused naming what is missing.
    m = phi3patch.load(REPO + "@other", device="cpu", verbose=False, download=False)
    assert m.dir == other
    with pytest.raises(phi3patch.Error, match="tokenizer"):
        m.tokenize("The goal")


def test_the_cache_comes_from_the_environment(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    make_cache(tmp_path / "hfhome" / "hub")
    assert _hub.resolve(REPO).dir.startswith(str(tmp_path / "hfhome" / "hub"))


def test_missing_model_names_the_id_the_folders_and_the_command(cache, monkeypatch):
    root, _, _ = cache
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)  # not installed
    with pytest.raises(phi3patch.Error) as e:
        phi3patch.load("microsoft/Phi-3-mini-4k-instruct", device="cpu")
    msg = str(e.value)
    assert msg.startswith("model microsoft/Phi-3-mini-4k-instruct: ")
    assert str(root) in msg and "hf download microsoft/Phi-3-mini-4k-instruct" in msg
    assert msg.endswith("huggingface_hub is not installed (pip install huggingface_hub), so nothing was downloaded")
    with pytest.raises(phi3patch.Error) as e:
        phi3patch.load("microsoft/Phi-3-mini-4k-instruct", device="cpu", download=False)
    assert "huggingface_hub" not in str(e.value)
    # The seed's TransformerLens name resolves to the real checkpoint's id, not to something else.
    with pytest.raises(phi3patch.Error, match=r"'phi-3' \(TransformerLens name\) -> microsoft/Phi-3-mini-4k-instruct"):
        phi3patch.load("phi-3", device="cpu", download=False)
    with pytest.raises(phi3patch.Error, match="did you mean 'phi-3'"):
        phi3patch.load("phi3", device="cpu")
    with pytest.raises(phi3patch.Error, match="no such directory"):
        phi3patch.load("/no/such/checkpoint", device="cpu")


def test_download_is_tried_where_huggingface_hub_is_installed(cache, monkeypatch):
    """With huggingface_hub importable, a missing id is fetched with snapshot_download (only the
    files the engine reads), and the result loads."""
    import sys
    import types
    root, folder, commits = cache
    calls = []

    def snapshot_download(repo, revision=None, allow_patterns=None):
        calls.append((repo, revision, tuple(allow_patterns)))
        return str(folder / "snapshots" / commits["main"])

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    m = phi3patch.load("acme/not-cached", device="cpu", verbose=False)
    assert m.dir == str(folder / "snapshots" / commits["main"])
    assert calls == [("acme/not-cached", None, tuple(_hub.ENGINE_FILES))]
    assert "*.safetensors" in _hub.ENGINE_FILES and "tokenizer.json" in _hub.ENGINE_FILES


def test_embedded_names():
    assert _hub.resolve(None).dir == _hub.resolve("embedded").dir
    assert os.path.samefile(_hub.resolve("embedded").dir, EMBEDDED)
