#!/usr/bin/env python3
"""Times torch.nn.functional.scaled_dot_product_attention on the GPU at the shapes of
bench/bench_gpu_kernels.cpp's BM_AttentionForward (B=4 rows, 32 heads x 96, causal,
T = 31..512), in bf16 and fp32, and prints JSON (one object) on stdout:

  {"device": ..., "torch": ..., "results": [{"dtype": "bf16", "B": 4, "T": 31, "H": 32,
    "HD": 96, "us": ..., "tflops": ...}, ...]}

FLOPs are counted as in the C++ benchmark: 4 * B * H * HD * T(T+1)/2 (causal half of QK^T
and PV). Timing: CUDA events around each call, L2 flushed before each, median of `--iters`.
Used by scripts/gpu-check for the attention-vs-SDPA ratio. `--device cpu` times the CPU
(wall clock, no L2 flush; what the `tools` CTest test runs where no GPU is). Each result also
holds `max_abs_err`: SDPA's output against softmax(QK^T/sqrt(HD) + causal mask) V in fp64.
"""
import argparse
import json
import math
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--H", type=int, default=32)
    ap.add_argument("--HD", type=int, default=96)
    ap.add_argument("--T", type=int, nargs="*", default=[31, 64, 128, 256, 512])
    ap.add_argument("--dtypes", nargs="*", default=["bf16", "fp32"])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(json.dumps({"error": f"torch not importable: {e}"}))
        return 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA GPU visible to torch"}))
        return 1

    dev = torch.device(args.device)
    cuda = args.device == "cuda"
    if cuda:
        l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 64 << 20) or (64 << 20)
        flush = torch.empty(2 * l2 // 4, dtype=torch.float32, device=dev)
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    results = []
    for name in args.dtypes:
        dt = dtypes[name]
        for T in args.T:
            g = torch.Generator(device=dev).manual_seed(0)
            q, k, v = (torch.randn(args.B, args.H, T, args.HD, device=dev, dtype=dt, generator=g)
                       for _ in range(3))
            for _ in range(5):  # warm-up (kernel selection, lazy init)
                F.scaled_dot_product_attention(q, k, v, is_causal=True)
            times = []
            for i in range(args.iters):
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    flush.fill_(float(i))
                    start.record()
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end) * 1e3)  # us
                else:
                    t0 = time.perf_counter()
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    times.append((time.perf_counter() - t0) * 1e6)
            us = statistics.median(times)
            flops = 4.0 * args.B * args.H * args.HD * T * (T + 1) / 2.0
            qd, kd, vd = (x.double() for x in (q, k, v))
            s = qd @ kd.transpose(-1, -2) / math.sqrt(args.HD)
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=dev).triu(1), float("-inf"))
            err = float((out.double() - torch.softmax(s, -1) @ vd).abs().max())
            results.append({"dtype": name, "B": args.B, "T": T, "H": args.H, "HD": args.HD,
                            "us": us, "tflops": flops / (us * 1e-6) / 1e12, "max_abs_err": err})
    name = torch.cuda.get_device_name(dev) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(json.dumps({"device": name, "torch": torch.__version__, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
