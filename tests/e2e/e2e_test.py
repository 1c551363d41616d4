#!/usr/bin/python3
"""End to end: the real `mergeserve serve` binary, driven by `mergectl` and
by the Python client; results compared bit for bit with `mergeserve merge`;
metrics scraped; restarts (clean and kill -9) survived.

Run by CTest with MERGESERVE_BIN, MERGECTL_BIN and PYTHONPATH set.
"""
import filecmp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MERGESERVE = os.environ.get("MERGESERVE_BIN", os.path.join(ROOT, "build", "mergeserve"))
MERGECTL = os.environ.get("MERGECTL_BIN", os.path.join(ROOT, "build", "mergectl"))
MAKE_MODEL = os.path.join(ROOT, "tests", "tools", "make_model.py")
sys.path.insert(0, os.path.join(ROOT, "client", "python"))

from mergeserve_client import Client, MergeError  # noqa: E402
from mergeserve.v1 import merge_pb2  # noqa: E402

import grpc  # noqa: E402


def free_ports(n):
    """n distinct free ports (all held open while choosing, so the kernel
    cannot hand out the same one twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Server:
    def __init__(self, data, roots):
        self.data, self.roots = data, roots
        self.proc = None

    def start(self):
        self.port, self.metrics_port = free_ports(2)
        args = [MERGESERVE, "serve", f"--listen=127.0.0.1:{self.port}",
                f"--metrics-listen=127.0.0.1:{self.metrics_port}",
                f"--data-dir={self.data}", "--grace-seconds=10"]
        for r in self.roots:
            args += ["--allow-root", r]
        args += getattr(self, "extra", [])
        self.log = open(getattr(self, "log_path", self.data + ".log"), "a")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


class EndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mergeserve_e2e_")
        cls.models = os.path.join(cls.tmp, "models")
        subprocess.run([sys.executable, MAKE_MODEL, cls.models, "--experts", "3",
                        "--shards", "2"], check=True, capture_output=True)
        cls.server = Server(os.path.join(cls.tmp, "data"), [cls.models]).start()

    @classmethod
    def tearDownClass(cls):
        if cls.server.proc and cls.server.proc.poll() is None:
            cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def ctl(self, *args, check=True):
        r = subprocess.run([MERGECTL, "--server", self.server.addr, *args],
                           capture_output=True, text=True)
        if check and r.returncode != 0:
            self.fail(f"mergectl {' '.join(args)} -> {r.returncode}: {r.stderr}")
        return r

    def local_merge(self, yaml_text, name):
        """The same merge one-shot, from folders named like the checkpoints."""
        cfg = os.path.join(self.models, name + ".yaml")
        with open(cfg, "w") as f:
            f.write(yaml_text)
        out = os.path.join(self.tmp, "local_" + name)
        subprocess.run([MERGESERVE, "merge", cfg, out, "--quiet", "--overwrite"],
                       check=True)
        return out

    def assertSameFolder(self, a, b):
        files_a, files_b = sorted(os.listdir(a)), sorted(os.listdir(b))
        self.assertEqual(files_a, files_b)
        for f in files_a:
            self.assertTrue(filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False),
                            f"{f} differs")

    def test_1_mergectl_register_merge_download(self):
        self.ctl("register", "base", os.path.join(self.models, "base"), "--role", "base")
        self.ctl("register", "expert0", os.path.join(self.models, "expert0"), "--base", "base")
        # expert1 arrives from a client without shared storage.
        self.ctl("register", "expert1", os.path.join(self.models, "expert1"), "--base", "base",
                 "--upload")
        listing = self.ctl("--json", "list").stdout
        for name in ("base", "expert0", "expert1"):
            self.assertIn(f'"name":"{name}"', listing)
        yaml_text = ("merge_method: ties\nbase_model: base\nmodels:\n"
                     "  - model: expert0\n    parameters: {density: 0.3}\n"
                     "  - model: expert1\n    parameters: {density: 0.5, weight: 0.7}\n")
        cfg = os.path.join(self.tmp, "ties.yaml")
        with open(cfg, "w") as f:
            f.write(yaml_text)
        out = os.path.join(self.tmp, "served")
        self.ctl("merge", cfg, "--output", out)
        self.assertSameFolder(out, self.local_merge(yaml_text, "ties"))
        jobs = self.ctl("--json", "jobs").stdout
        self.assertIn('"state":"SUCCEEDED"', jobs)
        chart = os.path.join(self.tmp, "diag.svg")
        table = self.ctl("analyze", cfg, "--plot", chart).stdout
        self.assertIn("pairwise cosine", table)
        with open(chart) as f:
            self.assertIn("<svg", f.read())

    def test_2_python_client(self):
        with Client(self.server.addr) as c:
            c.register("expert2", os.path.join(self.models, "expert2"), base="base",
                       upload=True, labels={"team": "py"})
            config = {"merge_method": "task_arithmetic", "base_model": "base",
                      "models": [{"model": "expert0"}, {"model": "expert2",
                                                        "parameters": {"weight": 0.5}}],
                      "parameters": {"lambda": 0.8}}
            seen = []
            job = c.merge(config, on_progress=seen.append)
            self.assertEqual(job.state, merge_pb2.JOB_STATE_SUCCEEDED)
            self.assertTrue(any(j.state == merge_pb2.JOB_STATE_RUNNING for j in seen))
            out = c.download(job.id, os.path.join(self.tmp, "py_out"))
            import json
            self.assertSameFolder(out, self.local_merge(json.dumps(config), "ta"))
            # Identical request, identical inputs: the stored result.
            self.assertEqual(c.submit(config).id, job.id)
            with self.assertRaises(grpc.RpcError) as e:
                c.submit({"merge_method": "ties", "base_model": "base", "models": ["ghost"]})
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_3_bad_requests_leave_the_registry_intact(self):
        before = self.ctl("--json", "list").stdout
        r = self.ctl("register", "etc", "/etc", "--role", "base", check=False)
        self.assertEqual(r.returncode, 6)
        self.assertIn("outside the storage roots", r.stderr)
        r = self.ctl("show", "nope", check=False)
        self.assertEqual(r.returncode, 3)
        corrupt = os.path.join(self.tmp, "corrupt")
        os.makedirs(corrupt, exist_ok=True)
        with open(os.path.join(corrupt, "model.safetensors"), "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}!!!!!!")
        r = self.ctl("register", "corrupt", corrupt, "--upload", check=False)
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertEqual(self.ctl("--json", "list").stdout, before)
        self.assertFalse(os.listdir(os.path.join(self.server.data, "uploads")))

    def test_4_metrics(self):
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=5).read().decode()
        self.assertRegex(text, r'mergeserve_rpc_requests_total\{code="OK",'
                               r'method="/mergeserve.v1.MergeService/CreateMergeJob"\} [1-9]')
        self.assertRegex(text, r'mergeserve_job_duration_seconds_count\{state="succeeded"\} [1-9]')
        self.assertRegex(text, r"mergeserve_bytes_streamed_total [1-9]")

    def test_5_restart_keeps_everything(self):
        self.assertEqual(self.server.stop(), 0)
        self.server.start()
        listing = self.ctl("--json", "list").stdout
        for name in ("base", "expert0", "expert1", "expert2"):
            self.assertIn(f'"name":"{name}"', listing)
        jobs = [json.loads(line) for line in
                self.ctl("--json", "jobs").stdout.splitlines() if line.strip()]
        jobs = jobs[0] if len(jobs) == 1 and isinstance(jobs[0], list) else jobs
        merges = [j for j in jobs if j["kind"] == "merge"]
        self.assertEqual([j["state"] for j in merges], ["SUCCEEDED"] * 2)
        # The analysis run through mergectl earlier is a job too, kept.
        self.assertIn("analyze", [j["kind"] for j in jobs])
        self.ctl("download", merges[0]["id"], os.path.join(self.tmp, "after_restart"))

    def test_6_a_job_killed_mid_merge_runs_again_after_the_restart(self):
        big = os.path.join(self.tmp, "big")
        subprocess.run([sys.executable, MAKE_MODEL, big, "--hidden", "768", "--layers", "4",
                        "--intermediate", "2048", "--vocab", "16000", "--experts", "2"],
                       check=True, capture_output=True)
        self.server.stop()
        self.server.roots.append(big)
        self.server.start()
        self.ctl("register", "big-base", os.path.join(big, "base"), "--role", "base")
        for e in ("0", "1"):
            self.ctl("register", "big" + e, os.path.join(big, "expert" + e), "--base", "big-base")
        cfg = os.path.join(self.tmp, "big.yaml")
        with open(cfg, "w") as f:
            f.write("merge_method: ties\nbase_model: big-base\nparameters: {trim_scope: model}\n"
                    "models:\n  - model: big0\n    parameters: {density: 0.2}\n"
                    "  - model: big1\n    parameters: {density: 0.2}\n")
        job_id = self.ctl("--json", "merge", cfg).stdout.split('"id":"')[1].split('"')[0]
        with Client(self.server.addr) as c:
            for job in c.watch(job_id):
                if job.state == merge_pb2.JOB_STATE_RUNNING:
                    break
        results = os.path.join(self.server.data, "results")
        self.server.stop(signal.SIGKILL)
        # The restarted replica (same id: the host name) knows it cannot still
        # be running the job: it goes back to the queue and runs again.
        self.server.start()
        with Client(self.server.addr) as c:
            for job in c.watch(job_id):
                pass
            self.assertEqual(job.state, merge_pb2.JOB_STATE_SUCCEEDED, job.error_message)
            self.assertEqual(job.attempt, 2)
            self.assertEqual(job.replica, socket.gethostname())
        leftovers = [n for n in os.listdir(results) if "tmp" in n]
        self.assertEqual(leftovers, [], "the killed run's partial result was collected")


if __name__ == "__main__":
    unittest.main(verbosity=2)
