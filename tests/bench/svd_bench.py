#!/usr/bin/python3
"""The matrix methods (tsv, iso_c, iso_cts) and the TALL-mask consensus
methods, timed: mergeserve against a PyTorch implementation of the same math
(torch.linalg.svd, fp64, every core) in the same run. A script that prints
tables (medians of --repeat runs), not a test.

  tests/bench/svd_bench.py [--repeat 3] [--sizes 512,1024,2048] [--model]
                           [--methods tsv,iso_c]

1. Per matrix size: one m×n fp32 tensor, a base and 4 experts. mergeserve:
   `mergeserve merge --json` on the fused backend (LAPACK dgesdd on the
   system's OpenBLAS) and on ATen (torch.linalg.svd), the merge's own
   seconds (process start-up excluded); PyTorch: the authors' algorithm in
   fp64 (tests/bench/svd_bench.py's torch_* functions), timed in-process.
2. --model: every method one-shot on the 170M × 4 benchmark model of
   merge_bench.py (wall, peak RSS), against TIES.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))
from make_zoo import save_safetensors  # noqa: E402

N = 4


def polar(a):
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


def torch_tsv(taus):
    m, n = taus[0].shape
    r = min(m, n)
    k = int(r * (1 / len(taus)))
    u = torch.zeros(m, r, dtype=torch.float64)
    s = torch.zeros(r, dtype=torch.float64)
    v = torch.zeros(r, n, dtype=torch.float64)
    for i, t in enumerate(taus):
        ui, si, vi = torch.linalg.svd(t, full_matrices=False)
        u[:, i * k:(i + 1) * k] = ui[:, :k]
        s[i * k:(i + 1) * k] = si[:k]
        v[i * k:(i + 1) * k] = vi[:k]
    return (polar(u) * s) @ polar(v)


def torch_iso_c(taus):
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    return s.mean() * (u @ vh)


def torch_iso_cts(taus, f=0.8):
    m, n = taus[0].shape
    r = min(m, n)
    c = int(r * f)
    d = round((r - c) / len(taus)) * len(taus)
    c, per = r - d, d // len(taus)
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    uc = u[:, :c]
    us, ss, vs = [], [], []
    for t in taus:
        ui, si, vi = torch.linalg.svd(t - uc @ (uc.T @ t), full_matrices=False)
        us.append(ui[:, :per]), ss.append(si[:per]), vs.append(vi[:per])
    us.append(uc), ss.append(s[:c]), vs.append(vh[:c])
    s_all = torch.cat(ss)
    return s_all.mean() * (polar(torch.cat(us, 1)) @ polar(torch.cat(vs, 0)))


PEERS = {"tsv": torch_tsv, "iso_c": torch_iso_c, "iso_cts": torch_iso_cts}


def merge_seconds(cfg, out, backend, threads):
    res = subprocess.run([os.path.join(ROOT, "build", "mergeserve"), "merge", cfg, out,
                          "--overwrite", "--quiet", "--json", "--backend", backend]
                         + threads, check=True, capture_output=True, text=True)
    j = json.loads(res.stdout)
    return j["seconds"], j["peak_rss_bytes"]


def per_size(args, tmp, threads):
    torch.set_num_threads(args.threads or os.cpu_count())
    print("| method | matrix | mergeserve LAPACK s | mergeserve ATen s | "
          "PyTorch s | PyTorch / LAPACK |")
    print("|---|---|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        m, n = (int(x) for x in size.split("x")) if "x" in size else (int(size),) * 2
        g = torch.Generator().manual_seed(m * 7 + n)
        base = torch.randn(m, n, generator=g)
        d = os.path.join(tmp, f"m{m}x{n}")
        save_safetensors(os.path.join(d, "base", "model.safetensors"), {"w": base})
        experts = []
        for i in range(N):
            e = base + 0.01 * torch.randn(m, n, generator=g)
            save_safetensors(os.path.join(d, f"e{i}", "model.safetensors"), {"w": e})
            experts.append(e)
        taus = [(e.double() - base.double()) for e in experts]
        for method, peer in PEERS.items():
            cfg = os.path.join(d, f"{method}.yaml")
            with open(cfg, "w") as f:
                f.write(f"merge_method: {method}\nbase_model: base\nmodels:\n"
                        + "".join(f"  - model: e{i}\n" for i in range(N)))
            ours = {b: statistics.median(
                merge_seconds(cfg, os.path.join(d, "out"), b, threads)[0]
                for _ in range(args.repeat)) for b in ("fused", "aten")}
            walls = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                peer(taus)
                walls.append(time.perf_counter() - start)
            theirs = statistics.median(walls)
            print(f"| {method} | {m}×{n} | {ours['fused']:.2f} | {ours['aten']:.2f} | "
                  f"{theirs:.2f} | {theirs / ours['fused']:.2f}× |", flush=True)


def model_rows(args, threads):
    model = os.path.join(ROOT, ".bench", "llama170m")
    if not os.path.exists(os.path.join(model, "ties.yaml")):
        sys.exit("run tests/bench/merge_bench.py first (it generates the model)")
    base_yaml = open(os.path.join(model, "ties.yaml")).read()
    print("\n| method (170M × 4 bf16) | wall s | peak RSS | vs TIES |")
    print("|---|---:|---:|---:|")
    rows = {}
    for method in ["ties"] + [m for m in args.methods.split(",") if m != "ties"]:
        text = base_yaml.replace("merge_method: ties", f"merge_method: {method}")
        if method in ("tsv", "iso_c", "iso_cts", "consensus_ta", "consensus_ties"):
            # No per-model densities or weights for these.
            text = "\n".join(l for l in text.splitlines()
                             if "density" not in l and "weight" not in l) + "\n"
        cfg = os.path.join(model, f"svd_{method}.yaml")
        with open(cfg, "w") as f:
            f.write(text)
        walls, peak = [], 0
        for _ in range(1 if method in ("tsv", "iso_cts") else args.repeat):
            start = time.monotonic()
            _, rss = merge_seconds(cfg, os.path.join(ROOT, ".bench", "out_svd"),
                                   "fused", threads)
            walls.append(time.monotonic() - start)
            peak = max(peak, rss)
        rows[method] = statistics.median(walls)
        print(f"| {method} | {rows[method]:.1f} | {peak / (1 << 30):.2f} GiB | "
              f"{rows[method] / rows['ties']:.1f}× |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="512,1024,1024x2816,2048")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", action="store_true")
    ap.add_argument("--methods", default="consensus_ta,consensus_ties,iso_c,tsv,iso_cts",
                    help="the methods --model runs (after TIES, which it always runs)")
    args = ap.parse_args()
    threads = ["--threads", str(args.threads)] if args.threads else []
    print(f"machine: {os.cpu_count()} cores; {N} experts; fp64 SVDs\n")
    with tempfile.TemporaryDirectory(prefix="mergeserve_svd_bench_") as tmp:
        if args.sizes:
            per_size(args, tmp, threads)
    if args.model:
        model_rows(args, threads)


if __name__ == "__main__":
    main()
