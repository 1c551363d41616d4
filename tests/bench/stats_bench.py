#!/usr/bin/python3
"""Throughput of the data-aware statistics, mergeserve against PyTorch on
the same machine, and the speedup a sweep gets from reusing them. A script
that prints tables (medians of --repeat runs), not a test.

  stats_bench.py [--repeat 3]    (run from the repository root after a build)

1. Gram capture (RegMean): a scripted 512-2048-2048-10 MLP on 8192 random
   inputs, batch 256. mergeserve: `mergeserve gram` (graph rewrite, timed
   inside the process); PyTorch: forward pre-hooks on the eager model, the
   same fp32 X^T X sums.
2. Exact Fisher: the digits zoo's 10-class expert on 300 examples
   (3000 per-example backward passes). mergeserve: `mergeserve fisher`;
   PyTorch: tests/tools/reference_fisher.py. Both timed inside the process.
3. Sweep reuse: an 8-point RI+TIES sweep on the zoo through one server
   (adaptation computed once, trims cached) against the same 8 points each
   on a fresh server.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "build", "mergeserve")
sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from make_zoo import save_safetensors  # noqa: E402
from reference_gram import hook_grams  # noqa: E402


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(512, 2048), torch.nn.GELU(),
            torch.nn.Linear(2048, 2048), torch.nn.GELU())
        self.head = torch.nn.Linear(2048, 10)

    def forward(self, x):
        return self.head(self.body(x))


def seconds_of(out):
    m = re.search(r"\(([\d.]+) s,", out) or re.search(r"seconds ([\d.]+)", out)
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mergeserve_stats_bench_")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{os.cpu_count()} cores")

    # 1. Grams.
    model = Mlp().eval()
    program = os.path.join(tmp, "mlp.pt")
    torch.jit.script(model).save(program)
    n = 8192
    x = torch.randn(n, 512)
    data = os.path.join(tmp, "inputs.safetensors")
    save_safetensors(data, {"inputs": x.numpy()})
    ours, theirs = [], []
    for _ in range(args.repeat):
        out = subprocess.run([BIN, "gram", "--program", program, "--data", data,
                              "--out", os.path.join(tmp, "g"), "--batch-size", "256"],
                             check=True, capture_output=True, text=True).stdout
        ours.append(seconds_of(out))
        theirs.append(hook_grams(Mlp().eval(), x, 256)[0])
    g_ours, g_theirs = statistics.median(ours), statistics.median(theirs)
    # 2. Fisher.
    zoo = os.path.join(tmp, "zoo")
    subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests", "tools", "make_zoo.py"),
                    zoo], check=True, capture_output=True)
    prog = os.path.join(zoo, "mirror", "program.pt")
    fdata = os.path.join(zoo, "data", "mirror_fisher.safetensors")
    ours, theirs = [], []
    for _ in range(args.repeat):
        out = subprocess.run([BIN, "fisher", "--program", prog, "--data", fdata,
                              "--out", os.path.join(tmp, "f")],
                             check=True, capture_output=True, text=True).stdout
        ours.append(seconds_of(out))
        out = subprocess.run(["/usr/bin/python3",
                              os.path.join(ROOT, "tests", "tools", "reference_fisher.py"),
                              prog, fdata, os.path.join(tmp, "f_ref.safetensors"), "exact"],
                             check=True, capture_output=True, text=True).stdout
        theirs.append(seconds_of(out))
    f_ours, f_theirs = statistics.median(ours), statistics.median(theirs)
    print()
    print("| statistic | examples | mergeserve | PyTorch | ratio |")
    print("|---|---:|---:|---:|---:|")
    print(f"| Grams, 512-2048-2048-10 MLP, batch 256 | {n} | {n / g_ours:,.0f} ex/s "
          f"| {n / g_theirs:,.0f} ex/s | {g_theirs / g_ours:.2f}x |")
    print(f"| exact Fisher, digits 10-class expert | 300 | {300 / f_ours:,.0f} ex/s "
          f"| {300 / f_theirs:,.0f} ex/s | {f_theirs / f_ours:.2f}x |")

    # 3. Sweep reuse.
    from zoo_test import Zoo, yaml_for  # noqa: E402
    lambdas, densities = "0.4,0.6,0.8,1.0", "0.2,0.5"
    params = {"ri_method": "ties", "steps": 200, "lr": 0.001}
    reuse, cold = [], []
    for _ in range(args.repeat):
        z = Zoo()
        try:
            cfg = z.write("ri.yaml", yaml_for("ri", params))
            start = time.time()
            summary = z.events("sweep", cfg, "--lambda", lambdas, "--density", densities)[-1]
            reuse.append(time.time() - start)
        finally:
            z.close()
        total, cold_stats, cold_trims = 0.0, 0, 0
        for d in densities.split(","):
            for lam in lambdas.split(","):
                z = Zoo()
                try:
                    cfg = z.write("ri.yaml", yaml_for("ri", params))
                    start = time.time()
                    one = z.events("sweep", cfg, "--lambda", lam, "--density", d)[-1]
                    total += time.time() - start
                    cold_stats += one["stats_misses"]
                    cold_trims += one["trim_cache_misses"]
                finally:
                    z.close()
        cold.append(total)
    r, c = statistics.median(reuse), statistics.median(cold)
    print()
    print("| 8-point RI+TIES sweep on the zoo | wall | statistics computed | trims computed |")
    print("|---|---:|---:|---:|")
    print(f"| one server, reusing | {r:.2f} s | {summary['stats_misses']} | "
          f"{summary['trim_cache_misses']} |")
    print(f"| each point on a fresh server | {c:.2f} s | {cold_stats} | {cold_trims} |")
    print(f"\nsweep speedup from reuse: {c / r:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
