#!/usr/bin/env python3
"""End-to-end tests of the Python instruments behind the project's claims (issue 22 item 3):
each runs one script of tools/ on the embedded model, next to the engine where the script
compares with it, and checks the agreement it reports. Registered in CTest with the label
`tools` (tests/CMakeLists.txt):

    tool_tests.py NAME --cli build/phi3patch --build build

Exit 0 = pass, 1 = fail, 77 = skipped (torch / transformers / tokenizers not importable, or a
file the test needs was not built), with the reason on stdout.
"""
import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools")
BASELINE = os.path.join(TOOLS, "baseline")
SKIP = 77
THREADS = "2"


class Skip(Exception):
    pass


def need(*modules):
    for m in modules:
        try:
            importlib.import_module(m)
        except Exception as e:  # ImportError, or a broken install
            raise Skip(f"{m} is not importable with {sys.executable} ({type(e).__name__}: {e}); "
                       "set PHI3_PYTHON to a venv with `pip install torch transformers tokenizers "
                       "safetensors sentencepiece`")


def run(cmd, **kw):
    print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=THREADS, OMP_NUM_THREADS=THREADS)
    r = subprocess.run(cmd, env=env, text=True, capture_output=True, **kw)
    sys.stdout.write(r.stdout[-4000:])
    sys.stdout.write(r.stderr[-4000:])
    return r


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)
    print("ok: " + msg, flush=True)


def engine_run(args, work, hooks, extra=()):
    out = os.path.join(work, "ours")
    r = run([args.cli, "run", "--device", "cpu", "--hooks", hooks, "--out", out, "--force", *extra])
    check(r.returncode == 0, "phi3patch run exits 0")
    return os.path.join(out, "results.json")


def compare_baseline(args, work, script, hooks, attr):
    need("torch", "transformers", "sentencepiece")
    ours = engine_run(args, work, hooks)
    base = os.path.join(work, "base.json")
    r = run([sys.executable, os.path.join(BASELINE, script), "--device", "cpu", "--hooks", hooks, "--json", base,
             "--threads", THREADS])
    check(r.returncode == 0, f"{script} exits 0")
    summary = os.path.join(work, "cmp.json")
    r = run([sys.executable, os.path.join(BASELINE, "compare.py"), ours, base, "--tol", "1e-5", "--attr-tol", "1e-6",
             "--json", summary])
    check(r.returncode == 0, "compare.py finds every matrix within tolerance (exit 0)")
    with open(summary) as f:
        s = json.load(f)
    for hook in hooks.split(","):
        row = s["hooks"].get(hook, {})
        d = row.get("activation_max_abs_diff")
        check(d is not None and d <= 1e-5, f"{hook}: activation patching equal to the engine's within 1e-5 ({d})")
        if attr:
            d = row.get("attribution_max_abs_diff")
            check(d is not None and d <= 1e-6, f"{hook}: attribution equal to the engine's within 1e-6 ({d})")
        check(row.get("ratio", 0) > 0, f"{hook}: both sides timed ({row.get('ratio')}x)")


def t_tl_loop(args, work):
    compare_baseline(args, work, "tl_loop.py", "resid_pre,attn_out,mlp_out,z", attr=False)


def t_batched_torch(args, work):
    compare_baseline(args, work, "batched_torch.py", "resid_pre,resid_mid,attn_out,mlp_out,z", attr=True)


def t_compare_results(args, work):
    a = engine_run(args, work, "resid_pre,mlp_out", ["--method", "all"])
    b_dir = os.path.join(work, "b")
    shutil.copytree(os.path.dirname(a), b_dir)
    b = os.path.join(b_dir, "results.json")
    script = os.path.join(TOOLS, "compare_results.py")
    r = run([sys.executable, script, a, b, "--json", os.path.join(work, "same.json")])
    check(r.returncode == 0, "identical runs compare equal (exit 0)")
    with open(os.path.join(work, "same.json")) as f:
        same = json.load(f)
    check(json.dumps(same).count("max_abs") > 0, "the summary lists per-matrix differences")
    with open(b) as f:
        doc = json.load(f)
    doc["results"][0]["values"][1][3] += 1e-3
    with open(b, "w") as f:
        json.dump(doc, f)
    r = run([sys.executable, script, a, b, "--tol", "1e-4"])
    check(r.returncode == 1, "a value moved by 1e-3 is found (exit 1)")
    r = run([sys.executable, script, a, b, "--tol", "2e-3"])
    check(r.returncode == 0, "... and passes a 2e-3 tolerance (exit 0)")
    del doc["results"][1]
    with open(b, "w") as f:
        json.dump(doc, f)
    r = run([sys.executable, script, a, b])
    check(r.returncode == 1, "a missing matrix is found (exit 1)")


def t_circuit_bench(args, work):
    need("torch", "transformers", "sentencepiece")
    out = os.path.join(work, "circuit_bench.json")
    r = run([sys.executable, os.path.join(TOOLS, "circuit_bench.py"), "--cli", args.cli, "--grid", "1,5,20,100",
             "--threads", THREADS, "--json", out])
    check(r.returncode == 0, "circuit_bench.py exits 0")
    with open(out) as f:
        res = json.load(f)
    check(res["score_max_rel_diff"] <= 1e-4, f"EAP-IG edge scores equal the engine's ({res['score_max_rel_diff']:.2e} "
          "of the largest |score|)")
    check(len(res["faithfulness"]) == 4, "every grid circuit evaluated by both")
    for row in res["faithfulness"]:
        check(row["engine_edges"] == row["torch_edges"], f"k={row['k']}: the same pruned circuit size")
    check(res["faithfulness_max_abs_diff"] <= 1e-4, f"faithfulness equal ({res['faithfulness_max_abs_diff']:.2e})")
    check(res["score_speedup"] > 0 and res["eval_speedup"] > 0, "both sides timed")


def t_tokenizer_bench(args, work):
    need("tokenizers")
    bench = os.path.join(args.build, "bench_tokenizer")
    if not os.path.exists(bench):
        raise Skip(f"{bench} was not built (PHI3_BUILD_BENCH=OFF)")
    out = os.path.join(work, "tokenizer.json")
    r = run([sys.executable, os.path.join(TOOLS, "tokenizer_bench.py"), "--bench", bench, "--out", out])
    check(r.returncode == 0, "tokenizer_bench.py exits 0 (it asserts equal token counts per text and layout)")
    with open(out) as f:
        doc = json.load(f)
    rows = doc["rows"]
    check(len(rows) == 6, "3 layouts x 2 texts measured")
    for row in rows:
        check(row["tokens"] > 1000, f"{row['layout']} {row['text']}: {row['tokens']} tokens on both sides")


def t_sdpa_bench(args, work):
    need("torch")
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    r = run([sys.executable, os.path.join(BASELINE, "sdpa_bench.py"), "--device", device, "--T", "31", "64",
             "--iters", "5", "--H", "8", "--HD", "32"])
    check(r.returncode == 0, f"sdpa_bench.py exits 0 on {device}")
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    check(len(doc["results"]) == 4, "2 dtypes x 2 lengths")
    for row in doc["results"]:
        tol = 1e-5 if row["dtype"] == "fp32" else 3e-2
        check(row["us"] > 0 and row["max_abs_err"] <= tol,
              f"{row['dtype']} T={row['T']}: {row['us']:.1f} us, output within {tol} of fp64 attention "
              f"({row['max_abs_err']:.2e})")


def t_tl_gpt2(args, work):
    # TransformerLens' HookedTransformer on the GPT-2 reference model: every stored hook of every
    # prompt within 1e-4 of the transformers-side reference the engine is verified against.
    need("transformer_lens", "safetensors", "transformers")
    r = run([sys.executable, os.path.join(TOOLS, "tl_gpt2_check.py"), "--tol", "1e-4"])
    check(r.returncode == 0 and "PASS" in r.stdout, "TransformerLens agrees with the GPT-2 reference on every hook")


TESTS = {"tl_gpt2": t_tl_gpt2, "tl_loop": t_tl_loop, "batched_torch": t_batched_torch, "compare_results": t_compare_results,
         "circuit_bench": t_circuit_bench, "tokenizer_bench": t_tokenizer_bench, "sdpa_bench": t_sdpa_bench}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(TESTS))
    ap.add_argument("--cli", required=True)
    ap.add_argument("--build", required=True)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix=f"phi3tools-{args.name}-")
    try:
        TESTS[args.name](args, work)
    except Skip as e:
        print(f"SKIP: {e}")
        return SKIP
    except AssertionError as e:
        print(f"FAIL: {e}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
