"""How the binding behaves as a Python library: the GIL released during work, Ctrl-C, two
models at once, no leaks over repeated calls."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

import phi3patch
from conftest import CLI, EMBEDDED, SEED_PAIRS, run_cli


def test_gil_is_released_during_a_sweep(model):
    ticks = []
    done = threading.Event()

    def work():
        model.patch(hooks=["resid_pre", "attn_out"], methods="activation", naive=True, progress=False)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    # The main thread kept running while the engine computed (with the GIL held it would not).
    assert len(ticks) > 20, len(ticks)


def test_ctrl_c_stops_a_sweep_within_a_second(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, time, signal, threading
        import phi3patch
        m = phi3patch.load({EMBEDDED!r}, device="cpu")
        out = {str(tmp_path / "out")!r}
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t0 = time.perf_counter()
        try:
            for _ in range(1000):  # far more than a second of naive sweeps
                m.patch(hooks=["z", "mlp_post", "resid_pre"], methods="activation", naive=True, out=out,
                        force=True, progress=False)
            print("NOT INTERRUPTED")
        except KeyboardInterrupt:
            print("INTERRUPTED %.3f" % (time.perf_counter() - t0 - 1.0))
        r = m.patch(hooks="resid_pre", methods="attribution", progress=False)  # still usable
        print("USABLE", r.matrix("resid_pre").shape)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ})
    lines = p.stdout.split("\n")
    assert p.returncode == 0, p.stderr
    stop = [l for l in lines if l.startswith("INTERRUPTED")]
    assert stop, p.stdout
    assert float(stop[0].split()[1]) < 1.0, stop  # stopped within a second of Ctrl-C
    assert any(l.startswith("USABLE (4, 29)") for l in lines), p.stdout
    leftovers = [f for f in os.listdir(tmp_path / "out") if ".tmp." in f] if (tmp_path / "out").exists() else []
    assert leftovers == []


def test_two_models_at_once(model, tmp_path):
    other_dir = tmp_path / "tiny"
    run_cli("make-random", "--like", "tiny", "--seed", "7", "--out", str(other_dir))
    other = phi3patch.load(str(other_dir), device="cpu")
    a1 = model.patch(hooks="resid_pre", progress=False)
    b1 = other.patch(hooks="resid_pre", progress=False)
    a2 = model.patch(hooks="resid_pre", progress=False)
    for me in ("attribution", "activation"):
        np.testing.assert_array_equal(a1.matrix("resid_pre", me), a2.matrix("resid_pre", me))
        assert not np.array_equal(a1.matrix("resid_pre", me), b1.matrix("resid_pre", me))
    assert other.n_layers == 4 and "tiny" in other.dir


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def test_no_leak_over_repeated_calls(model):
    for _ in range(10):  # warm-up: allocator pools, caches
        model.patch(hooks="resid_pre", progress=False).matrix("resid_pre", "activation")
    before = rss_mb()
    for _ in range(50):
        r = model.patch(hooks="resid_pre", progress=False)
        r.matrix("resid_pre", "activation")
        r.to_dict()
        model.run_with_cache(["The goal is to"], ["blocks.0.hook_resid_pre"])
    grown = rss_mb() - before
    assert grown < 8.0, f"RSS grew {grown:.1f} MB over 50 calls"
