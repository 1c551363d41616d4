#!/usr/bin/python3
"""Merge benchmark: mergeserve against a PyTorch per-tensor implementation of
the same math and against the machine's memory bandwidth, in one run.

Model: Llama-shaped, ~168M parameters in bf16 (hidden 1024, 8 layers,
intermediate 2816, vocab 32000, 3 shards), a base and 4 experts (1.6 GB of
inputs), TIES at density 0.2. Prints a markdown table of medians.

  tests/bench/merge_bench.py [--build build] [--runs 3] [--torch-runs 3]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PY = "/usr/bin/python3"


def run(cmd, **kw):
    start = time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    return time.monotonic() - start, out.stdout


def fresh(path):
    """Removes a previous run's output before the next run, untimed: on a
    file system mounted with `discard` (this VM's), freeing 321 MiB takes
    0.2 s inside unlink, which is not the merge's work. Both sides get it."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def gib(x):
    return x / (1 << 30)


def round_robin(mergeserve, runs, times, threads):
    """Each config of `runs` (label -> (cfg, out_dir, walls, peaks)) as a
    one-shot `mergeserve merge`, `times` times, taken round robin: this VM's
    speed drifts over minutes, and back-to-back runs of one config would
    carry the drift into the ratios. Returns (label, median wall, largest
    peak RSS) rows."""
    for _ in range(times):
        for cfg, out_dir, walls, peaks in runs.values():
            fresh(out_dir)
            wall, stdout = run([mergeserve, "merge", cfg, out_dir, "--overwrite",
                                "--quiet", "--json"] + threads)
            walls.append(wall)
            peaks.append(json.loads(stdout)["peak_rss_bytes"])
    return [(label, statistics.median(w), max(p))
            for label, (_, _, w, p) in runs.items()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--work", default=os.path.join(ROOT, ".bench"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--torch-runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", choices=["merge", "sweep", "methods"], default=None,
                    help="run one part: the merge comparison, the λ and weight "
                         "sweeps, or every streaming method one-shot")
    args = ap.parse_args()

    model = os.path.join(args.work, "llama170m")
    if not os.path.exists(os.path.join(model, "ties.yaml")):
        print("generating the benchmark models ...", file=sys.stderr)
        subprocess.run([PY, os.path.join(ROOT, "tests/tools/make_model.py"), model,
                        "--hidden", "1024", "--layers", "8", "--intermediate", "2816",
                        "--vocab", "32000", "--experts", "4", "--shards", "3",
                        "--dtype", "bf16", "--density", "0.2"], check=True)
    experts = [os.path.join(model, f"expert{i}") for i in range(4)]
    input_bytes = sum(os.path.getsize(os.path.join(d, f))
                      for d in [os.path.join(model, "base")] + experts
                      for f in os.listdir(d) if f.endswith(".safetensors"))

    # Configs: the same math as the PyTorch peer (per-tensor threshold keep),
    # mergekit's exact keep, and the paper's whole-model trim scope.
    base_yaml = open(os.path.join(model, "ties.yaml")).read()
    configs = {
        "ties, trim per tensor (keep: threshold, = PyTorch math)":
            base_yaml + "  keep: threshold\n",
        "ties, trim per tensor (mergekit exact keep)": base_yaml,
        "ties, trim_scope: model (exact keep)": base_yaml + "  trim_scope: model\n",
    }
    mergeserve = os.path.join(args.build, "mergeserve")
    threads = ["--threads", str(args.threads)] if args.threads else []
    if args.only in (None, "methods"):
        methods(args, model, mergeserve, threads)
    if args.only in (None, "sweep"):
        sweep(args, model, experts, mergeserve, threads)
    if args.only in ("sweep", "methods"):
        return
    _, bw_out = run([os.path.join(args.build, "tests", "mergeserve_membw"), "1024"])
    bandwidth = json.loads(bw_out)["read_bytes_per_second"]

    outputs = {}
    runs = {}  # label -> (cfg, out_dir, walls, peak RSS per run)
    # Named by position: str hashes differ per process, and every run would
    # leave another 321 MiB output behind.
    for i, (label, text) in enumerate(configs.items()):
        cfg = os.path.join(model, f"bench_{i}.yaml")
        with open(cfg, "w") as f:
            f.write(text)
        out_dir = os.path.join(args.work, f"out_{i}")
        outputs[label] = os.path.join(out_dir, "model.safetensors")
        runs[label] = (cfg, out_dir, [], [])
    rows = round_robin(mergeserve, runs, args.runs, threads)

    torch_out = os.path.join(args.work, "torch_out.safetensors")
    walls, rss = [], []
    for _ in range(args.torch_runs):
        fresh(torch_out)
        wall, stdout = run([PY, os.path.join(HERE, "torch_ties.py"),
                            os.path.join(model, "base"), torch_out] + experts +
                           ["--density", "0.2"] +
                           # Every core: torch defaults to one thread per
                           # physical core, and a one-thread peer flatters us.
                           ["--threads", str(args.threads or os.cpu_count())])
        walls.append(wall)
        rss.append(json.loads(stdout.strip().splitlines()[-1])["peak_rss_bytes"])
    torch_wall = statistics.median(walls)
    torch_rss = max(rss)

    same = open(torch_out, "rb").read()
    first = list(outputs.values())[0]
    ours = open(first, "rb").read()
    # Compare tensor bytes only (headers differ in metadata).
    def payload(b):
        n = int.from_bytes(b[:8], "little")
        return b[8 + n:]
    identical = payload(same) == payload(ours)

    print(f"\nmachine: {os.cpu_count()} cores, memory read bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s (tests/bench/membw, all cores)")
    print(f"inputs: base + 4 experts, {gib(input_bytes):.2f} GiB bf16; "
          f"medians of {args.runs} (mergeserve) and {args.torch_runs} (PyTorch) runs\n")
    print("| run | wall s | peak RSS | input GB/s | % of bandwidth | vs PyTorch |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, wall, peak in rows:
        rate = input_bytes / wall
        print(f"| mergeserve {label} | {wall:.2f} | {gib(peak):.2f} GiB | "
              f"{rate / 1e9:.2f} | {100 * rate / bandwidth:.0f}% | "
              f"{torch_wall / wall:.1f}x faster |")
    rate = input_bytes / torch_wall
    print(f"| PyTorch per-tensor (torch.kthvalue), tests/bench/torch_ties.py | "
          f"{torch_wall:.2f} | {gib(torch_rss):.2f} GiB | {rate / 1e9:.2f} | "
          f"{100 * rate / bandwidth:.0f}% | 1.0x |")
    tensor_wall = rows[1][1]
    model_wall = rows[2][1]
    print(f"\ntrim_scope: model / per-tensor (exact keep) wall ratio: "
          f"{model_wall / tensor_wall:.2f}")
    print(f"mergeserve (threshold keep) and PyTorch outputs bit-identical: "
          f"{'yes' if identical else 'NO'}")


def methods(args, model, mergeserve, threads):
    """Every task-vector method and model_stock one-shot on the same inputs:
    wall time against TIES's, and peak RSS."""
    base_yaml = open(os.path.join(model, "ties.yaml")).read()
    runs = {}  # method -> (cfg, out_dir, walls, peak RSS per run)
    for method in ["task_arithmetic", "ties", "dare_ties", "breadcrumbs", "della",
                   "model_stock"]:
        cfg = os.path.join(model, f"method_{method}.yaml")
        with open(cfg, "w") as f:
            f.write(base_yaml.replace("merge_method: ties", f"merge_method: {method}"))
        runs[method] = (cfg, os.path.join(args.work, f"out_method_{method}"), [], [])
    rows = round_robin(mergeserve, runs, args.runs, threads)
    ties = dict((m, w) for m, w, _ in rows)["ties"]
    print(f"\nEvery method one-shot on the same 4 experts (density 0.2 where it "
          f"applies), medians of {args.runs}:")
    print("| method | wall s | vs TIES | peak RSS |")
    print("|---|---:|---:|---:|")
    for method, wall, peak in rows:
        print(f"| {method} | {wall:.2f} | {wall / ties:.2f}x | {gib(peak):.2f} GiB |")


def durable_write_seconds(directory, nbytes, runs=3):
    """Median seconds to write `nbytes` to a new file and fsync it: the
    floor of a sweep point whose result is durable (each point writes one)."""
    block = b"\x5a" * (4 << 20)
    path = os.path.join(directory, "durable_write.tmp")
    walls = []
    for _ in range(runs):
        fresh(path)
        start = time.monotonic()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            left = nbytes
            while left > 0:
                left -= os.write(fd, block[:min(left, len(block))])
            os.fsync(fd)
        finally:
            os.close(fd)
        walls.append(time.monotonic() - start)
    fresh(path)
    return statistics.median(walls)


def write_probe(work, hidden, experts):
    """A validation task per expert for `Sweep`, which evaluates every point:
    a TorchScript program whose only parameter is the checkpoint's
    `model.norm.weight` (so loading a point reads one 2 KiB tensor of it)
    and 256 random examples. The numbers it gives mean nothing; it is there
    so the sweep's own path (points merged into scratch, evaluated, removed)
    can be timed on this model. Returns (program, dataset) paths per
    expert."""
    import numpy as np
    import torch

    class Norm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(hidden))

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = Norm()

    class Probe(torch.nn.Module):
        def __init__(self, proj):
            super().__init__()
            self.model = Inner()
            self.proj = proj

        def forward(self, x):
            return (x * self.model.norm.weight) @ self.proj

    out = []
    rng = np.random.default_rng(0)
    for i, _ in enumerate(experts):
        program = os.path.join(work, f"probe{i}.pt")
        torch.jit.script(Probe(torch.from_numpy(
            rng.standard_normal((hidden, 2)).astype(np.float32)))).save(program)
        inputs = rng.standard_normal((256, hidden)).astype(np.float32)
        labels = rng.integers(0, 2, 256).astype(np.int64)
        header = json.dumps({
            "inputs": {"dtype": "F32", "shape": list(inputs.shape),
                       "data_offsets": [0, inputs.nbytes]},
            "labels": {"dtype": "I64", "shape": list(labels.shape),
                       "data_offsets": [inputs.nbytes, inputs.nbytes + labels.nbytes]},
        }).encode()
        header += b" " * (-len(header) % 8)
        dataset = os.path.join(work, f"probe{i}_val.safetensors")
        with open(dataset, "wb") as f:
            f.write(len(header).to_bytes(8, "little") + header)
            f.write(inputs.tobytes() + labels.tobytes())
        out.append((program, dataset))
    return out


class Server:
    """A fresh `mergeserve serve` on a free port with its own data dir (the
    first job finds nothing cached), the base and experts registered."""

    def __init__(self, args, mergeserve, model, experts, probes=None):
        import socket
        self.data = os.path.join(args.work, "sweep_data")
        shutil.rmtree(self.data, ignore_errors=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [mergeserve, "serve", f"--listen=127.0.0.1:{self.port}",
             "--metrics-listen=", f"--data-dir={self.data}", "--allow-root", model,
             "--allow-root", args.work],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = None
        try:
            for _ in range(200):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mergeserve serve exited ({self.proc.returncode})")
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise RuntimeError(f"mergeserve serve is not listening on {self.port}")
            from mergeserve_client import Client
            self.client = Client(f"127.0.0.1:{self.port}")
            self.client.register("base", os.path.join(model, "base"), role="base")
            for i, e in enumerate(experts):
                name = os.path.basename(e)
                if probes:
                    self.client.register(name, e, base="base", program=probes[i][0],
                                         task=f"probe{i}")
                    self.client.register_dataset(f"probe{i}_val", probes[i][1],
                                                 task=f"probe{i}", role="validation")
                else:
                    self.client.register(name, e, base="base")
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        import signal
        if self.client is not None:
            self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()


def sweep(args, model, experts, mergeserve, threads):
    """10-point sweeps of TIES on the same checkpoints, over λ and over one
    expert's weight, against 10 cold one-shot `mergeserve merge` runs: as 10
    merge jobs on one server (its cache keeps the trim selections, and for λ
    the merged update; each result is stored, so written durably), and as
    one `Sweep` (its points merged into scratch, evaluated on a probe task,
    removed)."""
    sys.path.insert(0, os.path.join(ROOT, "client", "python"))
    os.environ.setdefault("MERGESERVE_PY_STUBS", os.path.join(args.build, "python"))

    base_yaml = open(os.path.join(model, "ties.yaml")).read()
    values = [round(0.1 * i, 1) for i in range(1, 11)]
    grids = {
        "λ = 0.1 … 1.0": (
            [base_yaml.replace("lambda: 1.0", f"lambda: {v:.1f}") for v in values],
            {"lambdas": values}),
        "expert0's weight = 0.1 … 1.0": (
            [base_yaml.replace("weight: 1.0", f"weight: {v:.1f}", 1) for v in values],
            {"axes": {"weight@expert0": values}}),
    }
    with open(os.path.join(model, "base", "config.json")) as f:
        hidden = json.load(f)["hidden_size"]
    probes = write_probe(args.work, hidden, experts)

    # Page cache warm for both sides (the first cold run would otherwise read
    # from disk).
    run([mergeserve, "merge", os.path.join(model, "ties.yaml"),
         os.path.join(args.work, "sweep_cold"), "--overwrite", "--quiet"] + threads)
    results = {}
    for name, (texts, sweep_args) in grids.items():
        cold = []
        for i, text in enumerate(texts):
            cfg = os.path.join(model, f"sweep_{i}.yaml")
            with open(cfg, "w") as f:
                f.write(text)
            fresh(os.path.join(args.work, "sweep_cold"))
            wall, _ = run([mergeserve, "merge", cfg, os.path.join(args.work, "sweep_cold"),
                           "--overwrite", "--quiet"] + threads)
            cold.append(wall)

        jobs = []
        with Server(args, mergeserve, model, experts) as c:
            for text in texts:
                start = time.monotonic()
                c.merge(text)
                jobs.append(time.monotonic() - start)

        def timed_sweep(c, text):
            start = time.monotonic()
            points = [e.point for e in c.sweep(text, **sweep_args)
                      if e.HasField("point")]
            assert len(points) == 10, f"{name}: {len(points)} points"
            return time.monotonic() - start, points

        with Server(args, mergeserve, model, experts, probes) as c:
            rpc, points = timed_sweep(c, base_yaml)
        # A server that has swept before: first the same grid at density
        # 0.3 (other trims, another q: nothing of it serves the timed
        # sweep but the memory and scratch files it leaves to reuse).
        with Server(args, mergeserve, model, experts, probes) as c:
            timed_sweep(c, base_yaml.replace("density: 0.2", "density: 0.3"))
            warm_rpc, _ = timed_sweep(c, base_yaml)
        results[name] = (cold, jobs, rpc, points, warm_rpc)

    result_bytes = sum(os.path.getsize(os.path.join(args.work, "sweep_cold", f))
                       for f in os.listdir(os.path.join(args.work, "sweep_cold"))
                       if f.endswith(".safetensors"))
    floor = durable_write_seconds(args.work, result_bytes)
    print(f"\n10-point sweeps of TIES (density 0.2) on the same 4 experts, as 10 "
          f"merge jobs on one server (results stored):")
    print("| sweep | 10 cold one-shot s | 10 jobs on one server s | first job s | "
          "median later job s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (cold, jobs, _, _, _) in results.items():
        print(f"| {name} | {sum(cold):.2f} | {sum(jobs):.2f} | {jobs[0]:.2f} | "
              f"{statistics.median(jobs[1:]):.2f} | {sum(cold) / sum(jobs):.2f}x |")
    # Not like for like: the cold runs' results are durable (fsynced) and
    # evaluate nothing; the Sweep's points are never synced, and each is
    # also evaluated. Its merge column is the merges alone.
    print("\nThe same grids as one `Sweep` (points in scratch, not synced, each "
          "evaluated on a probe task and removed; the cold runs write durably):")
    # A row of λ points merged in one pass reports that pass's time split
    # evenly over its points, so only the sums are compared.
    print("| sweep | 10 cold one-shot s | Sweep s | its merges s | its evaluations s "
          "| speed-up | on a server that swept before s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (cold, _, rpc, points, warm) in results.items():
        merges = sum(p.merge_seconds for p in points)
        evals = sum(p.eval_seconds for p in points)
        print(f"| {name} | {sum(cold):.2f} | {rpc:.2f} | {merges:.2f} | {evals:.2f} | "
              f"{sum(cold) / rpc:.2f}x | {warm:.2f} | {sum(cold) / warm:.2f}x |")
    # Every stored point writes a new durable result: the disk alone bounds
    # the jobs' speed-up, whatever the merge reuses.
    print(f"\nwriting one {result_bytes / 2**20:.0f} MiB result and fsyncing it "
          f"(median of 3): {floor:.2f} s ({result_bytes / floor / 1e6:.0f} MB/s); "
          f"ten of them: {10 * floor:.2f} s")
    for name, (cold, jobs, _, _, _) in results.items():
        print(f"{name}: largest speed-up of jobs a disk this fast allows with the "
              f"first job as measured: {sum(cold) / (jobs[0] + 9 * floor):.2f}x")



if __name__ == "__main__":
    main()
