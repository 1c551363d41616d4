#!/usr/bin/python3
"""How the merge's cost grows: TIES (mergekit preset, density 0.2) of the
170M-parameter Llama-shaped bf16 model with 2, 4 and 8 experts, and of a
model about 4x larger (hidden 2048, 11 layers, intermediate 5632: 696M
parameters) with 4 experts. Prints a table (medians of --runs one-shot
runs); a script, not a test.

  scale_bench.py [--work .bench] [--runs 3]   (after a build)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = "/usr/bin/python3"


def make(path, hidden, layers, inter, experts):
    if not os.path.exists(os.path.join(path, "ties.yaml")):
        print(f"generating {path} ...", file=sys.stderr)
        subprocess.run([PY, os.path.join(ROOT, "tests/tools/make_model.py"), path,
                        "--hidden", str(hidden), "--layers", str(layers),
                        "--intermediate", str(inter), "--vocab", "32000",
                        "--experts", str(experts), "--shards", "3",
                        "--dtype", "bf16", "--density", "0.2"], check=True)


def config(path, experts):
    lines = ["merge_method: ties", f"base_model: {path}/base", "models:"]
    for i in range(experts):
        lines += [f"  - model: {path}/expert{i}",
                  "    parameters: {weight: 1.0, density: 0.2}"]
    out = os.path.join(path, f"scale_{experts}.yaml")
    open(out, "w").write("\n".join(lines) + "\n")
    return out


def folder_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
               if f.endswith(".safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=os.path.join(ROOT, ".bench"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    args = ap.parse_args()
    small = os.path.join(args.work, "llama170m_x8")
    large = os.path.join(args.work, "llama680m")
    make(small, 1024, 8, 2816, 8)
    make(large, 2048, 11, 5632, 4)
    cases = [(small, 2), (small, 4), (small, 8), (large, 4)]
    print("| model | experts | inputs GiB | wall s | input GB/s | s per GiB read | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path, experts in cases:
        cfg = config(path, experts)
        inputs = folder_bytes(os.path.join(path, "base")) + sum(
            folder_bytes(os.path.join(path, f"expert{i}")) for i in range(experts))
        walls, rss, params = [], [], 0
        for _ in range(args.runs):
            out = subprocess.run(
                [os.path.join(args.build, "mergeserve"), "merge", cfg,
                 os.path.join(args.work, "scale_out"), "--overwrite", "--quiet",
                 "--json"], check=True, capture_output=True, text=True).stdout
            j = json.loads(out.strip().splitlines()[-1])
            walls.append(j["seconds"])
            rss.append(j["peak_rss_bytes"])
            params = j["bytes_written"] // 2
        wall = statistics.median(walls)
        gib = inputs / (1 << 30)
        print(f"| {params / 1e6:.0f}M | {experts} | {gib:.2f} | {wall:.2f} | "
              f"{inputs / wall / 1e9:.2f} | {wall / gib:.2f} | "
              f"{max(rss) / (1 << 30):.2f} |")


if __name__ == "__main__":
    main()
