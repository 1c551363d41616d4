#!/usr/bin/env python3
"""Three replicas on one PostgreSQL and one shared data dir, on loopback.

Register through replica A, submit merges through B and C (some identical),
kill -9 the replica running a merge mid-way: the job finishes on another
replica as attempt 2, bit-identical to a one-shot `mergeserve merge`; Watch
from a third replica follows it; Cancel through one replica stops a job
running on another; after restarting everything nothing is lost or
duplicated."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_test import MAKE_MODEL, MERGECTL, MERGESERVE, Server, Client  # noqa: E402
from e2e_test import merge_pb2  # noqa: E402
from pg_server import PgServer  # noqa: E402

import filecmp  # noqa: E402


class Replica(Server):
    """A replica: Server with its id, a short lease and its own log. Without
    a database it runs on the data dir's SQLite."""

    def __init__(self, data, roots, database, replica_id, flags=()):
        super().__init__(data, roots)
        self.replica_id = replica_id
        self.log_path = f"{data}.{replica_id}.log"
        self.extra = [f"--replica-id={replica_id}", "--lease-seconds=3", "--workers=1",
                      "--metrics-listen=", *flags]
        if database:
            self.extra.append(f"--database={database}")


class Replicas(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mergeserve_replicas_")
        cls.pg = PgServer()
        cls.url = cls.pg.create_database("mergeserve")
        cls.models = os.path.join(cls.tmp, "models")
        # Big enough that a merge runs for seconds on two cores.
        subprocess.run([sys.executable, MAKE_MODEL, cls.models, "--hidden", "768",
                        "--layers", "8", "--intermediate", "2048", "--vocab", "16000",
                        "--experts", "3"], check=True, capture_output=True)
        cls.data = os.path.join(cls.tmp, "shared-data")
        os.makedirs(cls.data)
        cls.replicas = [Replica(cls.data, [cls.models], cls.url, f"replica-{n}")
                        for n in "abc"]
        for r in cls.replicas:
            r.start()

    @classmethod
    def tearDownClass(cls):
        for r in cls.replicas:
            if r.proc and r.proc.poll() is None:
                r.stop()
        cls.pg.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def ctl(self, replica, *args):
        r = subprocess.run([MERGECTL, "--server", replica.addr, *args],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.fail(f"mergectl {' '.join(args)} -> {r.returncode}: {r.stderr}")
        return r.stdout

    def config(self, density, weight=1.0):
        return ("merge_method: ties\nbase_model: base\nparameters: {trim_scope: model}\n"
                "models:\n"
                f"  - model: expert0\n    parameters: {{density: {density}, weight: {weight}}}\n"
                f"  - model: expert1\n    parameters: {{density: {density}}}\n")

    def wait_running(self, client, job_id, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = client.job(job_id)
            if job.state == merge_pb2.JOB_STATE_RUNNING and job.replica:
                return job
            time.sleep(0.05)
        self.fail(f"{job_id} never ran")

    def replica_named(self, name):
        return next(r for r in self.replicas if r.replica_id == name)

    def test_replicas(self):
        a, b, c = self.replicas
        self.ctl(a, "register", "base", os.path.join(self.models, "base"), "--role", "base")
        for e in ("expert0", "expert1", "expert2"):
            self.ctl(a, "register", e, os.path.join(self.models, e), "--base", "base")
        # Every replica sees the registry.
        for r in (b, c):
            self.assertIn('"name":"expert2"', self.ctl(r, "--json", "list"))

        # A dozen submissions through B and C, four of them repeats.
        densities = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
        ids = {}
        lock = threading.Lock()

        def submit(replica, d):
            with Client(replica.addr) as cl:
                job_id = cl.submit(self.config(d)).id
            with lock:
                ids.setdefault(d, set()).add(job_id)

        threads = [threading.Thread(target=submit, args=((b, c)[i % 2], d))
                   for i, d in enumerate(densities + densities[:4])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for d, found in ids.items():
            self.assertEqual(len(found), 1, f"density {d}: one job for one request")
        job_ids = sorted(next(iter(v)) for v in ids.values())

        # Kill -9 the replica running the first job, mid-merge.
        with Client(c.addr) as cc:
            victim_job = job_ids[0]
            for jid in job_ids:
                if cc.job(jid).state == merge_pb2.JOB_STATE_RUNNING:
                    victim_job = jid
                    break
            running = self.wait_running(cc, victim_job)
            victim = self.replica_named(running.replica)
            # A client whose address list starts at the victim: its Watch
            # stream breaks with the kill and resumes on the next address.
            survivor = next(r for r in self.replicas if r is not victim)
            resumed = []

            def follow():
                with Client(f"ipv4:{victim.addr},{survivor.addr}") as cf:
                    resumed.extend(cf.watch(victim_job))

            follower = threading.Thread(target=follow)
            follower.start()
            time.sleep(0.2)
            victim.stop(signal.SIGKILL)
            killed_at = time.time()
            # Watch it from a replica that is still alive.
            watcher = next(r for r in self.replicas if r is not victim)
        with Client(watcher.addr) as cw:
            seen = list(cw.watch(victim_job))
        failover = time.time() - killed_at
        follower.join(timeout=120)
        self.assertTrue(resumed, "the failover client saw the job")
        self.assertEqual(resumed[-1].state, merge_pb2.JOB_STATE_SUCCEEDED)
        self.assertEqual(resumed[-1].attempt, 2)
        final = seen[-1]
        self.assertEqual(final.state, merge_pb2.JOB_STATE_SUCCEEDED, final.error_message)
        self.assertEqual(final.attempt, 2)
        self.assertNotEqual(final.replica, victim.replica_id)
        print(f"failover: job finished {failover:.1f} s after the kill on "
              f"{final.replica}", file=sys.stderr)

        # Bit-identical to a one-shot merge of the same request.
        density = next(d for d, v in ids.items() if victim_job in v)
        cfg = os.path.join(self.models, "oneshot.yaml")
        with open(cfg, "w") as f:
            f.write(self.config(density))
        local = os.path.join(self.tmp, "oneshot")
        subprocess.run([MERGESERVE, "merge", cfg, local, "--quiet", "--overwrite"],
                       check=True)
        got = os.path.join(self.tmp, "downloaded")
        self.ctl(watcher, "download", victim_job, got)
        self.assertEqual(sorted(os.listdir(local)), sorted(os.listdir(got)))
        for name in os.listdir(local):
            self.assertTrue(filecmp.cmp(os.path.join(local, name), os.path.join(got, name),
                                        shallow=False), name)

        # The killed replica comes back; all jobs finish.
        victim.start()
        alive = self.replicas
        with Client(alive[0].addr) as cl:
            for jid in job_ids:
                for job in cl.watch(jid):
                    pass
                self.assertEqual(job.state, merge_pb2.JOB_STATE_SUCCEEDED, job.error_message)

        # Cancel through one replica a job running on another.
        with Client(a.addr) as ca:
            job = ca.submit(self.config(0.15, weight=0.9))
            running = self.wait_running(ca, job.id)
            other = next(r for r in self.replicas if r.replica_id != running.replica)
            with Client(other.addr) as co:
                asked = time.time()
                co.cancel(job.id)
                for ev in co.watch(job.id):
                    pass
            stop_latency = time.time() - asked
            self.assertEqual(ev.state, merge_pb2.JOB_STATE_CANCELLED)
            self.assertLess(stop_latency, 5.0)
            print(f"cancel through another replica: stopped in {stop_latency:.2f} s",
                  file=sys.stderr)
            cancelled_id = job.id

        # Restart everything: nothing lost, nothing duplicated.
        listing = self.ctl(b, "--json", "jobs")
        for r in self.replicas:
            r.stop()
        for r in self.replicas:
            r.start()
        after = self.ctl(c, "--json", "jobs")
        self.assertEqual(after.count('"id":'), listing.count('"id":'))
        self.assertEqual(after.count('"id":'), len(job_ids) + 1)
        self.assertEqual(after.count('"state":"SUCCEEDED"'), len(job_ids))
        self.assertIn(f'"id":"{cancelled_id}"', after)
        self.assertIn('"replica":"replica-', after)
        self.assertIn('"attempt":2', after)

    def test_t_an_analysis_is_a_job_any_replica_answers(self):
        a, b, c = self.replicas
        req = merge_pb2.AnalyzeMergeRequest(
            spec=merge_pb2.MergeSpec(config_yaml=self.config(0.25)))
        with Client(b.addr) as cb:
            first = cb.merges.AnalyzeMerge(req, timeout=300)
        self.assertEqual(list(first.experts), ["expert0", "expert1"])
        # Through another replica: the stored diagnostics, the same job.
        with Client(c.addr) as cc:
            second = cc.merges.AnalyzeMerge(req, timeout=300)
            analyses = [j for j in cc.jobs() if j.kind == "analyze"]
        self.assertEqual(first.SerializeToString(), second.SerializeToString())
        self.assertEqual(len(analyses), 1)
        self.assertEqual(analyses[0].state, merge_pb2.JOB_STATE_SUCCEEDED)
        self.assertTrue(analyses[0].replica.startswith("replica-"))

    def test_serve_check(self):
        """serve --check: flags, database, migrations; then exits."""
        data = os.path.join(self.tmp, "check-data")
        ok = subprocess.run([MERGESERVE, "serve", "--check", f"--database={self.url}",
                             f"--data-dir={data}", "--replica-id=checker"],
                            capture_output=True, text=True)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertIn("schema current", ok.stdout)
        self.assertIn("postgresql://postgres@", ok.stdout)
        # A password on the command line is refused, and not echoed.
        bad = subprocess.run([MERGESERVE, "serve", "--check", f"--data-dir={data}",
                              "--database=postgresql://app:hunter2@127.0.0.1:1/x"],
                             capture_output=True, text=True)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("PGPASSWORD", bad.stderr)
        self.assertNotIn("hunter2", bad.stderr + bad.stdout)
        # Nothing listening: UNAVAILABLE (exit code of the shared table).
        down = subprocess.run([MERGESERVE, "serve", "--check", f"--data-dir={data}",
                               "--database=postgresql://app@127.0.0.1:1/x"],
                              capture_output=True, text=True)
        self.assertNotEqual(down.returncode, 0)
        self.assertIn("cannot connect to postgresql://app@127.0.0.1:1/x", down.stderr)



class SweepsAndEvaluationsAcrossReplicas(unittest.TestCase):
    """Two replicas over the digits zoo: a sweep is a job; kill -9 the
    replica running it after its first point and the other replica resumes
    it after the points already logged; streams on either replica, and one
    that began at the killed replica, see every point once."""

    TASKS = ("parity", "high", "mod3", "mirror")

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mergeserve_replica_sweeps_")
        cls.pg = PgServer()
        url = cls.pg.create_database("zoo")
        cls.zoo = os.path.join(cls.tmp, "zoo")
        make_zoo = os.path.join(os.path.dirname(MAKE_MODEL), "make_zoo.py")
        subprocess.run(["/usr/bin/python3", make_zoo, cls.zoo], check=True,
                       capture_output=True)
        data = os.path.join(cls.tmp, "shared-data")
        os.makedirs(data)
        cls.replicas = [Replica(data, [cls.zoo], url, f"replica-{n}") for n in "ab"]
        for r in cls.replicas:
            r.start()
        a = cls.replicas[0]

        def ctl(*args):
            subprocess.run([MERGECTL, "--server", a.addr, *args], check=True,
                           capture_output=True)
        ctl("register", "base", f"{cls.zoo}/base", "--role", "base")
        for t in cls.TASKS:
            ctl("register", t, f"{cls.zoo}/{t}", "--base", "base", "--task", t)
            for split, role in (("eval", "eval"), ("val", "validation"),
                                ("aux", "auxiliary")):
                ctl("dataset", f"{t}_{split}", f"{cls.zoo}/data/{t}_{split}.safetensors",
                    "--task", t, "--role", role)

    @classmethod
    def tearDownClass(cls):
        for r in cls.replicas:
            if r.proc and r.proc.poll() is None:
                r.stop()
        cls.pg.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def sweep(self, client, raw=False):
        # RI adapts the experts again for every `steps`: seconds per point.
        config = ("merge_method: ri\nbase_model: base\n"
                  "parameters: {ri_method: ties, density: 0.5, seed: 3}\nmodels:\n" +
                  "".join(f"  - model: {t}\n" for t in self.TASKS))
        steps = [20, 30, 40, 50, 60, 70]
        if raw:  # the stream as the server sends it (the client skips repeats)
            req = merge_pb2.SweepRequest(spec=merge_pb2.MergeSpec(config_yaml=config))
            req.axes.add(parameter="steps", values=steps)
            return client.merges.Sweep(req)
        return client.sweep(config, axes={"steps": steps})

    def test_a_sweep_survives_its_replica_and_streams_follow_it(self):
        a, b = self.replicas
        with Client(b.addr) as cb:
            stream = self.sweep(cb)
            first = next(stream)
            self.assertEqual(first.job.kind, "sweep")
            job_id = first.job.id
            stream.close()  # leaving the stream leaves the job running
            deadline = time.time() + 120
            job = cb.job(job_id)
            while time.time() < deadline and not (
                    job.state == merge_pb2.JOB_STATE_RUNNING and job.replica):
                time.sleep(0.05)
                job = cb.job(job_id)
        victim = next(r for r in self.replicas if r.replica_id == job.replica)
        survivor = next(r for r in self.replicas if r is not victim)
        # The same request through a client whose address list begins at the
        # victim follows the same job; its stream breaks with the kill and
        # resumes on the survivor, skipping what it already saw.
        events, first_point = [], threading.Event()

        def follow():
            with Client(f"ipv4:{victim.addr},{survivor.addr}") as cf:
                for e in self.sweep(cf):
                    events.append(e)
                    if e.HasField("point"):
                        first_point.set()

        follower = threading.Thread(target=follow)
        follower.start()
        self.assertTrue(first_point.wait(timeout=300), "no point before the kill")
        victim.stop(signal.SIGKILL)
        follower.join(timeout=600)
        self.assertFalse(follower.is_alive())
        self.assertTrue(events[0].HasField("job"))
        self.assertEqual(events[0].job.id, job_id)
        points = [e.point for e in events if e.HasField("point")]
        self.assertEqual([p.index for p in points], list(range(6)))
        self.assertEqual([p.values["steps"] for p in points], [20, 30, 40, 50, 60, 70])
        summary = events[-1].summary
        self.assertEqual(summary.best.mean_accuracy, max(p.mean_accuracy for p in points))
        with Client(survivor.addr) as cs:
            done = cs.job(job_id)
            self.assertEqual(done.state, merge_pb2.JOB_STATE_SUCCEEDED, done.error_message)
            self.assertEqual(done.attempt, 2)
            self.assertEqual(done.replica, survivor.replica_id)
            # A new stream replays the log: each point once (the second
            # attempt did not redo what the first logged), unchanged.
            replay = list(self.sweep(cs, raw=True))
        again = [e.point for e in replay if e.HasField("point")]
        self.assertEqual([p.SerializeToString() for p in again],
                         [p.SerializeToString() for p in points])
        self.assertEqual(replay[-1].summary.SerializeToString(), summary.SerializeToString())
        # An evaluation is a job too: the same request again is the same
        # job, with the same numbers.
        with Client(survivor.addr) as cs:
            ev1 = list(cs.evaluate(checkpoint="parity", tasks=["parity", "high"]))
            ev2 = list(cs.evaluate(checkpoint="parity", tasks=["parity", "high"]))
        self.assertEqual(ev1[0].evaluation.kind, "evaluate")
        self.assertEqual(ev1[0].evaluation.id, ev2[0].evaluation.id)
        self.assertEqual(ev1[-1].summary.tasks, ev2[-1].summary.tasks)
        self.assertEqual([t.task for t in ev1[-1].summary.tasks], ["parity", "high"])

if __name__ == "__main__":
    unittest.main(verbosity=2)
