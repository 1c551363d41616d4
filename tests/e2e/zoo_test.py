#!/usr/bin/python3
"""Data-aware merging end to end on the digits zoo (tests/tools/make_zoo.py):
the real server with experts registered with their programs and tasks, task
datasets (one uploaded), Fisher/Gram/RI computed inside merge requests,
sweeps picking each method's best point on validation data, and the
result evaluated on held-out eval data.

  zoo_test.py            the unittest suite (run by CTest)
  zoo_test.py --table    print the README's table (markdown) and timings
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_test import MERGECTL, MERGESERVE, ROOT, Client, Server  # noqa: E402

MAKE_ZOO = os.path.join(ROOT, "tests", "tools", "make_zoo.py")
TASKS = ["parity", "high", "mod3", "mirror"]
LAMBDAS = "0.2,0.4,0.6,0.8,1.0,1.2"
# The SVD methods' updates are normalised differently (Iso flattens the
# spectrum): the authors search up to 3.
SVD_LAMBDAS = "0.2,0.4,0.6,0.8,1.0,1.5,2.0,3.0"
# (row label, merge_method, fixed parameters, sweep arguments)
METHODS = [
    ("task arithmetic", "task_arithmetic", {},
     ["--lambda", "0.1,0.2,0.3,0.4,0.5,0.6,0.8,1.0"]),
    ("TIES", "ties", {}, ["--lambda", LAMBDAS, "--density", "0.2,0.5,0.8"]),
    ("DARE-TIES", "dare_ties", {"seed": 1},
     ["--lambda", LAMBDAS, "--density", "0.2,0.5,0.8"]),
    ("Fisher (exact, normalized)", "fisher", {"normalize": True},
     ["--param", "fisher_floor=1e-8,1e-6,1e-4"]),
    ("RegMean (ridge 1e-3)", "regmean", {"ridge": 0.001},
     ["--param", "alpha=0.1,0.5,0.9,1"]),
    ("RI + TIES (200 steps)", "ri",
     {"ri_method": "ties", "steps": 200, "lr": 0.001},
     ["--lambda", LAMBDAS, "--density", "0.2,0.5"]),
    ("TSV-Merge", "tsv", {}, ["--lambda", SVD_LAMBDAS]),
    ("Iso-C", "iso_c", {}, ["--lambda", SVD_LAMBDAS]),
    ("Iso-CTS", "iso_cts", {},
     ["--lambda", SVD_LAMBDAS, "--param", "common_space_fraction=0.5,0.8"]),
    ("consensus TA (TALL masks)", "consensus_ta", {},
     ["--lambda", LAMBDAS, "--param", "consensus_k=1,2"]),
    ("consensus TIES (TALL masks)", "consensus_ties", {},
     ["--lambda", LAMBDAS, "--param", "consensus_k=1,2"]),
]
# The SVD methods whose two backends (LAPACK, ATen) must give the same rows.
SVD_METHODS = ("tsv", "iso_c", "iso_cts")


def read_safetensors(path):
    """{name: float32 array} of a safetensors file (F32 and BF16)."""
    import numpy as np
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        raw = data[t["data_offsets"][0]:t["data_offsets"][1]]
        if t["dtype"] == "F32":
            a = np.frombuffer(raw, dtype=np.float32)
        elif t["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            continue
        out[name] = a.reshape(t["shape"])
    return out


def c_sweep_request(yaml, lambdas):
    from mergeserve.v1 import merge_pb2
    return merge_pb2.SweepRequest(spec=merge_pb2.MergeSpec(config_yaml=yaml),
                                  lambdas=lambdas)


def yaml_for(method, params):
    lines = [f"merge_method: {method}", "base_model: base", "parameters:"]
    for k, v in params.items():
        lines.append(f"  {k}: {json.dumps(v)}")
    if not params:
        lines[-1] = "parameters: {}"
    lines.append("models:")
    lines += [f"  - model: {t}" for t in TASKS]
    return "\n".join(lines) + "\n"


class Zoo:
    """A server with the zoo registered; shared by the tests and --table."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="mergeserve_zoo_")
        self.zoo = os.path.join(self.tmp, "zoo")
        subprocess.run(["/usr/bin/python3", MAKE_ZOO, self.zoo], check=True,
                       capture_output=True)
        with open(os.path.join(self.zoo, "zoo.json")) as f:
            self.report = json.load(f)
        self.server = Server(os.path.join(self.tmp, "data"), [self.zoo]).start()
        self.ctl("register", "base", f"{self.zoo}/base", "--role", "base")
        for t in TASKS:
            if t == "mirror":  # by upload, program given explicitly
                local = os.path.join(self.tmp, "mirror_local")
                shutil.copytree(f"{self.zoo}/mirror", local)
                os.rename(f"{local}/program.pt", f"{self.tmp}/mirror_program.pt")
                self.ctl("register", t, local, "--base", "base", "--task", t,
                         "--program", f"{self.tmp}/mirror_program.pt", "--upload")
            else:  # a server-side folder: its program.pt is attached
                self.ctl("register", t, f"{self.zoo}/{t}", "--base", "base",
                         "--task", t)
            for split, role in (("eval", "eval"), ("val", "validation"),
                                ("fisher", "fisher"), ("aux", "auxiliary")):
                args = ["dataset", f"{t}_{split}",
                        f"{self.zoo}/data/{t}_{split}.safetensors",
                        "--task", t, "--role", role]
                if t == "mirror" and split == "eval":
                    args.append("--upload")
                self.ctl(*args)

    def ctl(self, *args, check=True):
        r = subprocess.run([MERGECTL, "--server", self.server.addr, "--json", *args],
                           capture_output=True, text=True, timeout=600)
        if check and r.returncode != 0:
            raise AssertionError(f"mergectl {' '.join(args)}: {r.returncode}\n{r.stderr}")
        return r

    def events(self, *args):
        r = self.ctl(*args)
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def eval_accuracy(self, *args):
        """Per-task eval accuracy from an eval stream's summary."""
        summary = [e for e in self.events(*args) if e.get("event") == "summary"][-1]
        return {t["task"]: t["accuracy"] for t in summary["tasks"]}

    def sweep(self, label, method, params, sweep_args):
        cfg = self.write(f"{method}_sweep.yaml", yaml_for(method, params))
        start = time.time()
        ev = self.events("sweep", cfg, *sweep_args)
        sweep_seconds = time.time() - start
        summary = ev[-1]
        assert summary["event"] == "summary", summary
        best = dict(params)
        best.update(summary["best_values"])
        final = self.write(f"{method}_best.yaml", yaml_for(method, best))
        start = time.time()
        events = self.events("merge", final, "--eval")
        merge_seconds = time.time() - start
        job = events[0]
        result = [e for e in events if e.get("event") == "summary"][-1]
        return {"label": label, "best": summary["best_values"],
                "val_mean": summary["best_mean_accuracy"],
                "eval": {t["task"]: t["accuracy"] for t in result["tasks"]},
                "sweep": summary, "sweep_seconds": sweep_seconds,
                "merge_eval_seconds": merge_seconds, "job": job["id"]}

    def close(self):
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


class ZooTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.z = Zoo()
        cls.base = cls.z.eval_accuracy("eval", "base")
        cls.results = {m: cls.z.sweep(*spec) for spec in METHODS for m in [spec[1]]}

    @classmethod
    def tearDownClass(cls):
        cls.z.close()

    def test_experts_evaluate_as_in_pytorch(self):
        for t in TASKS:
            acc = self.z.eval_accuracy("eval", t, "--task", t)
            self.assertAlmostEqual(acc[t], self.z.report["tasks"][t]["expert_accuracy"],
                                   places=6, msg=t)

    def test_base_is_weaker_than_each_expert(self):
        for t in TASKS:
            self.assertLess(self.base[t], self.z.report["tasks"][t]["expert_accuracy"], t)

    def test_every_merge_beats_the_base_on_average(self):
        base_mean = sum(self.base.values()) / len(TASKS)
        for method, r in self.results.items():
            mean = sum(r["eval"].values()) / len(TASKS)
            self.assertGreater(mean, base_mean, method)

    def test_data_aware_merges_beat_the_base_on_every_task(self):
        for method in ("fisher", "regmean", "ri"):
            for t in TASKS:
                self.assertGreater(self.results[method]["eval"][t], self.base[t],
                                   f"{method} on {t}")

    def test_sweep_reuses_trims_and_statistics(self):
        ties = self.results["ties"]["sweep"]
        # 6 lambdas per density, merged in one pass (one result per lambda,
        # base + lambda * update): each trim (4 tensors x 4 experts) is
        # computed and each tensor's merged update looked for once per
        # density, and nothing is read back from the cache.
        self.assertEqual(ties["trim_cache_misses"], 3 * 4 * 4 + 3 * 4)
        self.assertEqual(ties["trim_cache_hits"], 0)
        # The SVD methods factorise each of the zoo's two matrices once per
        # sweep (the λ-free τ_m is cached): 8 λ points, iso_cts 2 fractions.
        for method, misses, points in (("tsv", 2, 8), ("iso_c", 2, 8),
                                       ("iso_cts", 4, 16)):
            s = self.results[method]["sweep"]
            self.assertEqual(s["trim_cache_misses"], misses, method)
            self.assertEqual(s["trim_cache_hits"], 2 * points - misses, method)
        fisher = self.results["fisher"]["sweep"]
        # The four Fishers are computed at the first point (or found from an
        # earlier merge) and reused by the other two.
        self.assertLessEqual(fisher["stats_misses"], 4)
        self.assertEqual(fisher["stats_hits"] + fisher["stats_misses"], 3 * 4)
        again = self.z.events("sweep", self.z.write("f.yaml", yaml_for(
            "fisher", {"normalize": True})), "--param", "fisher_floor=1e-6")[-1]
        self.assertEqual(again["stats_misses"], 0)
        self.assertEqual(again["stats_hits"], 4)

    def test_svd_rows_are_identical_between_backends(self):
        """The best tsv/iso_c/iso_cts configs, merged one-shot on the LAPACK
        and the ATen backend: weights within the spec's SVD tolerance, and
        the ATen result evaluates exactly as the server's merge did."""
        import numpy as np
        for method in SVD_METHODS:
            r = self.results[method]
            params = {"lambda": 1.0}
            params.update(r["best"])
            yaml = yaml_for(method, params).replace(
                "base_model: base", f"base_model: {self.z.zoo}/base")
            for t in TASKS:
                yaml = yaml.replace(f"- model: {t}\n", f"- model: {self.z.zoo}/{t}\n")
            cfg = self.z.write(f"{method}_paths.yaml", yaml)
            outs = {}
            for backend in ("fused", "aten"):
                out = os.path.join(self.z.zoo, f"{method}_{backend}")  # inside the roots
                subprocess.run([MERGESERVE, "merge", cfg, out, "--overwrite", "--quiet",
                                "--backend", backend], check=True)
                outs[backend] = read_safetensors(os.path.join(out, "model.safetensors"))
            for name, want in outs["aten"].items():
                have = outs["fused"][name]
                scale = float(np.abs(want).max()) or 1.0
                self.assertLessEqual(float(np.abs(have - want).max()), 1e-4 * scale,
                                     f"{method} {name}")
            name = f"{method}_aten"
            self.z.ctl("register", name, os.path.join(self.z.zoo, f"{method}_aten"),
                       "--base", "base")
            self.assertEqual(self.z.eval_accuracy("eval", name), r["eval"], method)

    def test_ri_lowers_interference(self):
        jobs = {j["id"]: j for j in self.z.events("jobs")[0]}
        ri = jobs[self.results["ri"]["job"]]
        before = ri["metrics"]["ri.interference_before"]
        after = ri["metrics"]["ri.interference_after"]
        self.assertGreater(before, 0)
        self.assertLess(after, before)
        # Diagnostics of the RI merge name the experts as the request does,
        # and adaptation makes the task vectors less alike.
        ri_diag = self.z.events("analyze", os.path.join(self.z.tmp, "ri_best.yaml"))[0]
        ties_diag = self.z.events("analyze", os.path.join(self.z.tmp, "ties_best.yaml"))[0]
        self.assertEqual(ri_diag["experts"], TASKS)
        def mean_cos(d):  # the matrix comes flattened, row-major
            c, n = d["overall"]["cosine"], len(TASKS)
            return sum(c[i * n + j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
        self.assertLess(mean_cos(ri_diag), mean_cos(ties_diag))

    def test_python_client_sweeps_and_evaluates(self):
        from mergeserve.v1 import merge_pb2
        with Client(self.z.server.addr) as c:
            events = list(c.sweep(yaml_for("ties", {}), lambdas=[0.6, 0.8],
                                  densities=[0.2]))
            points = [e.point for e in events if e.HasField("point")]
            summary = events[-1].summary
            self.assertEqual([p.index for p in points], [0, 1])
            self.assertEqual(dict(points[1].values), {"density": 0.2, "lambda": 0.8})
            self.assertEqual(summary.best.mean_accuracy,
                             max(p.mean_accuracy for p in points))
            # The trims were cached by the earlier TIES sweep (16 found, none
            # computed). Its merged updates were not kept (each row of
            # lambdas was one pass), so each tensor's is looked for and missed.
            self.assertEqual(summary.trim_cache_hits, 4 * 4)
            self.assertEqual(summary.trim_cache_misses, 4)
            # The base's evaluation in setUpClass (mergectl eval base) was
            # the same request: the same job, its tasks replayed.
            events = list(c.evaluate(checkpoint="base"))
            tasks = {m.task: m.accuracy for m in events[-1].summary.tasks}
            self.assertEqual(tasks, self.base)
            self.assertEqual(events[0].evaluation.kind, "evaluate")
            self.assertEqual(events[0].evaluation.state, merge_pb2.JOB_STATE_SUCCEEDED)
            self.assertEqual([e.task.task for e in events if e.HasField("task")], TASKS)
            # A new request runs, with progress per batch.
            events = list(c.evaluate(checkpoint="base", max_examples=150))
            self.assertTrue(any(e.HasField("progress") for e in events))
            self.assertEqual(events[-1].summary.tasks[0].examples, 150)
            ds = c.datasets(task="mirror", role="eval")
            self.assertEqual([d.examples for d in ds], [297])

    def test_cancelled_streams_leave_the_server_serving(self):
        import grpc
        from mergeserve.v1 import merge_pb2
        with Client(self.z.server.addr) as c:
            stream = c.merges.Sweep(c_sweep_request(yaml_for("ri", {
                "ri_method": "ties", "steps": 50, "seed": 7}), [0.2, 0.4, 0.6, 0.8]))
            first = next(stream)  # the sweep's job
            self.assertEqual(first.job.kind, "sweep")
            stream.cancel()
            with self.assertRaises(grpc.RpcError) as err:
                for _ in stream:
                    pass
            self.assertEqual(err.exception.code(), grpc.StatusCode.CANCELLED)
            # The job runs on without its caller, until it is cancelled.
            self.assertIn(c.job(first.job.id).state,
                          (merge_pb2.JOB_STATE_QUEUED, merge_pb2.JOB_STATE_RUNNING))
            c.cancel(first.job.id)
            for job in c.watch(first.job.id):
                pass
            self.assertEqual(job.state, merge_pb2.JOB_STATE_CANCELLED)
            # Neither target: INVALID_ARGUMENT, on a server that still serves.
            with self.assertRaises(grpc.RpcError) as err:
                list(c.evaluate())
            self.assertEqual(err.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            events = list(c.evaluate(checkpoint="parity", tasks=["parity"]))
            self.assertEqual(events[-1].summary.tasks[0].task, "parity")

    def test_clear_errors(self):
        # An expert without a program cannot take part in a Fisher merge.
        bare = os.path.join(self.z.zoo, "bare")
        os.makedirs(bare, exist_ok=True)
        shutil.copy(f"{self.z.zoo}/parity/model.safetensors", bare)
        self.z.ctl("register", "bare", bare, "--base", "base")
        cfg = self.z.write("bad_fisher.yaml", "merge_method: fisher\nbase_model: base\n"
                           "models:\n  - model: parity\n  - model: bare\n")
        r = self.z.ctl("merge", cfg, check=False)
        self.assertEqual(r.returncode, 7, r.stderr)
        self.assertIn("'bare' has no program", r.stderr)
        # Eval data must be labeled; paths stay inside the storage roots.
        r = self.z.ctl("dataset", "x", f"{self.z.zoo}/data/parity_aux.safetensors",
                       "--task", "parity", "--role", "eval", check=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("no 'labels'", r.stderr)
        r = self.z.ctl("dataset", "y", "/etc/passwd", "--task", "parity",
                       "--role", "fisher", check=False)
        self.assertEqual(r.returncode, 6, r.stderr)
        # Sweeping a parameter that is not a number of the request is refused.
        ta = self.z.write("ta.yaml", yaml_for("task_arithmetic", {}))
        r = self.z.ctl("sweep", ta, "--param", "nonsense=1", check=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("'nonsense' is not a numeric merge parameter", r.stderr)


def table():
    z = Zoo()
    try:
        base = z.eval_accuracy("eval", "base")
        experts = {t: z.eval_accuracy("eval", t, "--task", t)[t] for t in TASKS}
        rows = [("each expert alone", experts, "", None, None),
                ("base backbone", base, "", None, None)]
        for spec in METHODS:
            r = z.sweep(*spec)
            best = ", ".join(f"{k} {v:g}" for k, v in sorted(r["best"].items()))
            points = 1
            for flag, values in zip(spec[3][::2], spec[3][1::2]):
                points *= len(values.split("=")[-1].split(","))
            rows.append((r["label"], r["eval"], best, r["sweep"],
                         (points, r["sweep_seconds"])))
        print("| backbone | " + " | ".join(TASKS) + " | mean | picked on validation |")
        print("|---|" + "---:|" * (len(TASKS) + 1) + "---|")
        for label, acc, best, _, _ in rows:
            mean = sum(acc[t] for t in TASKS) / len(TASKS)
            print(f"| {label} | " + " | ".join(f"{acc[t]:.3f}" for t in TASKS)
                  + f" | {mean:.3f} | {best} |")
        print()
        print("| sweep | points | wall | trim cache hits/misses | statistics reused/computed |")
        print("|---|---:|---:|---:|---:|")
        for label, _, _, s, (points, secs) in rows[2:]:
            print(f"| {label} | {points} | {secs:.2f} s | "
                  f"{s['trim_cache_hits']}/{s['trim_cache_misses']}"
                  f" | {s['stats_hits']}/{s['stats_misses']} |")
    finally:
        z.close()


if __name__ == "__main__":
    if "--table" in sys.argv:
        table()
    else:
        unittest.main()
