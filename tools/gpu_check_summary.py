#!/usr/bin/env python3
"""Assemble $OUT/gpu-check.json from the raw files scripts/gpu-check left in $RAW.

    RAW=dir OUT=dir DEVICE_NAME=.. DRIVER=.. COMMIT=.. TESTS_RC=0 START=<epoch> \
        CURRENT_STEP=<step under way or ""> COMPLETE=0|1 status_json=<step\tstatus lines> \
        python3 tools/gpu_check_summary.py

gpu-check calls it after every step, so the JSON always holds what was measured so far;
"current_step" names the step under way (if the check was cut, the one it was cut in) and
"complete" is true only after the last step. Inputs (each optional): ctest-gpu.xml (junit),
gpu-check.log, bench_gpu.json (Google Benchmark), sdpa.json (tools/baseline/sdpa_bench.py),
e2e.json and e2e_p3m.json (`phi3patch bench --json`), circuit_embedded_cuda.json / circuit_p3m_cuda.json
(`phi3patch circuit`), cmp_tiny.json / cmp_p3m_batched.json /
cmp_p3m_tl.json / cmp_p3m_tl_fp32.json (tools/baseline/compare.py), p3m_parts.txt. A JSON file
cut short (a benchmark killed by its time limit) is read up to its last complete entry and
marked "truncated". Besides the raw figures it writes, at the top level, the Phi-3-mini
figures (device, commit, model, forward_ms, attribution_ms, sweep_resid_pre_s, sweep_all_s,
baseline_batched_s, baseline_loop_s (TransformerLens-style loop, bf16), baseline_loop_fp32_s
(TL's default fp32), the speed-ups, max_abs_diff_vs_baseline) and "targets": each target
with its measured value and whether it was met. A figure not measured is null, never
estimated.
"""
import json
import os
import re
import time
out = os.environ.get("OUT", ".")
raw = os.environ.get("RAW", out)
truncated = []


def close_json(text):
    """The longest prefix of a cut-off JSON text that ends after a complete value, closed."""
    for end in [i for i, ch in enumerate(text) if ch in "}]"][::-1][:400]:
        prefix, stack, in_str, esc = text[:end + 1], [], False, False
        for ch in prefix:
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
                continue
            if ch == '"':
                in_str, esc = True, False
            elif ch in "[{":
                stack.append("]" if ch == "[" else "}")
            elif ch in "]}":
                if stack:
                    stack.pop()
        try:
            return json.loads(prefix + "".join(reversed(stack)))
        except ValueError:
            continue
    return None


def load(name):
    try:
        with open(os.path.join(raw, name)) as f:
            text = f.read()
    except OSError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        v = close_json(text)
        if v is not None:
            truncated.append(name)
        return v


def collect():
    """The raw figures: device, tests, kernel benchmarks, bandwidth fractions, SDPA, e2e."""
    summary = {
        "device": os.environ.get("DEVICE_NAME", "unknown"), "driver": os.environ.get("DRIVER", "unknown"),
        "commit": os.environ.get("COMMIT", "unknown"), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": int(time.time()) - int(os.environ.get("START", int(time.time()))),
        "budget_s": int(os.environ.get("BUDGET_S", "0") or 0),
        "complete": os.environ.get("COMPLETE", "0") == "1",
        "current_step": os.environ.get("CURRENT_STEP") or None,
        "steps": dict(l.split("\t", 1) for l in os.environ.get("status_json", "").splitlines() if "\t" in l),
    }
    for name in ("p3m_parts", "mpi_parts"):
        try:
            with open(os.path.join(raw, name + ".txt")) as f:
                summary[name] = dict(l.rstrip("\n").split("\t", 1) for l in f if "\t" in l)
        except OSError:
            pass
    # tests: junit if present, else ctest's summary line in the log
    tests = {"rc": int(os.environ.get("TESTS_RC", "-1"))}
    try:
        import xml.etree.ElementTree as ET
        root = ET.parse(os.path.join(raw, "ctest-gpu.xml")).getroot()
        cases = root.iter("testcase")
        passed = failed = skipped = 0
        failed_names = []
        for c in cases:
            st = c.get("status", "")
            if c.find("failure") is not None or st == "fail":
                failed += 1; failed_names.append(c.get("name"))
            elif c.find("skipped") is not None or st in ("notrun", "disabled"):
                skipped += 1
            else:
                passed += 1
        tests.update(passed=passed, failed=failed, skipped=skipped, failed_names=failed_names[:50])
    except Exception:
        try:
            txt = open(os.path.join(out, "gpu-check.log")).read()
            m = re.findall(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)", txt)
            if m:
                _, f, n = map(int, m[-1]); tests.update(passed=n - f, failed=f)
        except Exception:
            pass
    summary["tests"] = tests

    bench = load("bench_gpu.json")
    figs = {}
    if bench:
        summary["bench_context"] = {k: bench.get("context", {}).get(k) for k in ("date", "host_name", "num_cpus", "library_build_type")}
        for b in bench.get("benchmarks", []):
            name = b["name"].replace("/manual_time", "")
            if b.get("error_occurred"):
                figs[name] = {"error": b.get("error_message")}
                continue
            e = {"us": b.get("real_time")}
            if "bytes_per_second" in b: e["GB/s"] = b["bytes_per_second"] / 1e9
            if "TFLOP/s" in b: e["TFLOP/s"] = b["TFLOP/s"]
            if b.get("label"): e["label"] = b["label"]
            figs[name] = e
    summary["benchmarks"] = figs

    # bandwidth fractions of the D2D copy at the same row count
    d2d = {n.split("/")[1]: v["GB/s"] for n, v in figs.items() if n.startswith("BM_D2DCopy/") and "GB/s" in v}
    summary["d2d_GBps"] = d2d
    fr = {}
    for n, v in figs.items():
        parts = n.split("/")
        if len(parts) == 2 and parts[0] != "BM_D2DCopy" and "GB/s" in v and parts[1] in d2d and d2d[parts[1]] > 0:
            fr.setdefault(parts[0][3:], {})[parts[1]] = round(v["GB/s"] / d2d[parts[1]], 3)
    summary["fraction_of_d2d"] = fr
    summary["bandwidth_target"] = 0.70
    summary["bandwidth_target_met"] = {k: min(v.values()) >= 0.70 for k, v in fr.items()
                                       if k in ("RmsNorm", "Rotary", "Swiglu", "CastF32ToBF16", "CastBF16ToF32")}

    sdpa = load("sdpa.json")
    if sdpa and "results" in sdpa:
        ratios = []
        for r in sdpa["results"]:
            ours = figs.get(f"BM_AttentionForward/{r['T']}/{r['B']}", {})
            if "us" in ours and r["us"] > 0:
                ratios.append({"T": r["T"], "sdpa_dtype": r["dtype"], "ours_us": ours["us"], "sdpa_us": r["us"],
                               "ours_over_sdpa_time": round(ours["us"] / r["us"], 3)})
        summary["attention_vs_sdpa"] = {"sdpa_device": sdpa.get("device"), "torch": sdpa.get("torch"),
                                        "note": "ours: fp32 inputs, fp32 CUDA-core math; >1 means slower than SDPA",
                                        "ratios": ratios}
    elif sdpa:
        summary["attention_vs_sdpa"] = sdpa
    e2e = load("e2e.json")
    if e2e is not None:
        summary["e2e"] = e2e
    for key in ("e2e_p3m", "cmp_tiny", "cmp_p3m_batched", "cmp_p3m_tl", "cmp_p3m_tl_fp32", "cmp_mpi_fp32",
                "cmp_mpi_bf16", "mpi_bench", "predicted", "python_cuda", "long"):
        v = load(key + ".json")
        if v is not None:
            summary[key] = v
    for key in ("circuit_embedded_cuda", "circuit_p3m_cuda"):  # `phi3patch circuit` (step circuit)
        v = load(key + ".json")
        if v is not None:
            summary[key] = {k: v.get(k) for k in ("method", "graph", "prompts", "T", "logit_diff", "timing")}
            summary[key]["faithfulness"] = [{"k": p["k"], "edges": p["edges_after_pruning"],
                                             "faithfulness": p["faithfulness"]} for p in v.get("faithfulness", [])]
    return summary


def issue6_figures(summary):
    """The Phi-3-mini-shape figures and targets (null where not measured)."""
    p3m = summary.get("e2e_p3m") or {}
    sweeps = {s.get("hook"): s for s in p3m.get("sweeps", [])}
    tl = (summary.get("cmp_p3m_tl") or {}).get("hooks", {}).get("resid_pre", {})
    tl32 = (summary.get("cmp_p3m_tl_fp32") or {}).get("hooks", {}).get("resid_pre", {})
    bt = (summary.get("cmp_p3m_batched") or {}).get("hooks", {}).get("resid_pre", {})
    diffs = [h.get("activation_max_abs_diff") for c in ("cmp_p3m_tl", "cmp_p3m_batched")
             for h in (summary.get(c) or {}).get("hooks", {}).values() if h.get("activation_max_abs_diff") is not None]
    rp = sweeps.get("resid_pre", {})
    three = [sweeps.get(h, {}).get("fast_seconds") for h in ("resid_pre", "attn_out", "mlp_out")]
    f = {
        "model": (f"{p3m.get('model')} (L={p3m.get('layers')}, B={p3m.get('B')}, T={p3m.get('T')})"
                  if p3m else None),
        "forward_ms": p3m.get("forward_ms"),
        "attribution_ms": p3m.get("attribution_ms"),
        "sweep_resid_pre_s": rp.get("fast_seconds"),
        "sweep_all_s": sum(three) if all(x is not None for x in three) else None,
        "baseline_loop_s": tl.get("baseline_seconds"),
        "baseline_loop_fp32_s": tl32.get("baseline_seconds"),
        "baseline_batched_s": bt.get("baseline_seconds"),
        "speedup_vs_loop": tl.get("ratio"),
        "speedup_vs_loop_fp32": tl32.get("ratio"),
        "speedup_vs_batched": bt.get("ratio"),
        "max_abs_diff_vs_baseline": max(diffs) if diffs else None,
        "speedup_vs_naive_resid_pre": rp.get("speedup_vs_naive"),
    }
    cmp_tiny = (summary.get("cmp_tiny") or {}).get("hooks", {})
    tiny = [h.get("activation_max_abs_diff") for h in cmp_tiny.values() if h.get("activation_max_abs_diff") is not None]
    f["max_abs_diff_vs_torch_fp32_tiny"] = max(tiny) if tiny else None

    # Measured beside the roofline's prediction for this device (bench --predict), per phase.
    pred = {p.get("phase"): p.get("predicted_ms") for p in (summary.get("predicted") or {}).get("phases", [])}
    limits = {p.get("phase"): p.get("limit_ms") for p in (p3m.get("roofline") or {}).get("phases", [])}
    measured = {"forward": f["forward_ms"], "attribution": f["attribution_ms"]}
    for h, s in sweeps.items():
        measured["sweep " + str(h)] = s.get("fast_seconds") * 1e3 if s.get("fast_seconds") is not None else None
    f["measured_vs_predicted"] = {
        ph: {"measured_ms": measured.get(ph), "predicted_ms": pred.get(ph),
             "roofline_limit_at_measured_peaks_ms": limits.get(ph),
             "measured_over_predicted": (measured[ph] / pred[ph]) if measured.get(ph) and pred.get(ph) else None}
        for ph in sorted(set(pred) | set(measured))}

    def target(value, limit, at_most):
        if value is None:
            return {"value": None, "limit": limit, "met": None}
        return {"value": value, "limit": limit, "met": value <= limit if at_most else value >= limit}

    # Issue 15's targets (H100, Phi-3-mini, seed batch). A bf16 TransformerLens-style loop
    # takes about 10 s and the exact sweep's FLOP floor is about 0.3 s, so >= 50x holds only
    # against TL's default fp32 loop; against the bf16 loop the target is >= 20x.
    f["targets"] = {
        "forward_ms <= 3.5": target(f["forward_ms"], 3.5, True),
        "attribution_ms <= 10": target(f["attribution_ms"], 10.0, True),
        "sweep_resid_pre_s <= 0.45": target(f["sweep_resid_pre_s"], 0.45, True),
        "sweep_all_s <= 1.3": target(f["sweep_all_s"], 1.3, True),
        "speedup_vs_batched >= 3": target(f["speedup_vs_batched"], 3.0, False),
        "speedup_vs_loop (bf16) >= 20": target(f["speedup_vs_loop"], 20.0, False),
        "speedup_vs_loop_fp32 >= 50": target(f["speedup_vs_loop_fp32"], 50.0, False),
    }
    return f


def main():
    summary = collect()
    summary.update(issue6_figures(summary))
    summary["truncated_files"] = truncated
    path = os.path.join(out, "gpu-check.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(summary, fh, indent=1)
        fh.write("\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
