#!/usr/bin/env python3
"""Replicas benchmark (a script, not a test): job claim latency, small-job
throughput and failover time for 1 replica on SQLite, 1 replica on
PostgreSQL and 3 replicas on PostgreSQL sharing one data dir, on loopback.

    MERGESERVE_BIN=build/mergeserve MERGESERVE_PY_STUBS=build/python \
      /usr/bin/python3 tests/bench/replicas_bench.py [--jobs 60] [--repeat 3]

- claim latency: on an idle service, a job's start_time minus its
  create_time (submitted through each replica in turn, claimed by whichever
  has room first), median over 15 jobs submitted one after another;
- throughput: small distinct merges (TIES on the tiny test model) submitted
  at once through all replicas, jobs per second until the last ends;
- failover: a large merge's replica is killed (-9) mid-merge; seconds until
  the job is RUNNING again elsewhere (or, with one replica, after it was
  restarted at once), with --lease-seconds 3.
Prints a Markdown table of medians over --repeat runs."""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from e2e_test import MAKE_MODEL, Client, merge_pb2  # noqa: E402
from pg_server import PgServer  # noqa: E402
from replicas_test import Replica  # noqa: E402


def ts(t):
    return t.seconds + t.nanos / 1e9


def config(i, base="base"):
    return (f"merge_method: ties\nbase_model: {base}\nparameters: {{lambda: {1 + i / 1000}}}\n"
            "models:\n  - model: expert0\n    parameters: {density: 0.3}\n"
            "  - model: expert1\n    parameters: {density: 0.3}\n")


def run(setup, n_replicas, database_url, small, big, jobs, tmp):
    data = tempfile.mkdtemp(dir=tmp, prefix=f"{setup}-")
    reps = [Replica(data, [small, big], database_url, f"r{i}",
                    flags=["--queue-limit=1000", "--quota-jobs=0"])
            for i in range(n_replicas)]
    for r in reps:
        r.start()
    try:
        with Client(reps[0].addr) as c:
            for root, prefix in ((small, ""), (big, "big-")):
                c.register(prefix + "base", os.path.join(root, "base"), role="base")
                for e in ("expert0", "expert1"):
                    c.register(prefix + e, os.path.join(root, e), base=prefix + "base")
        ids, lock = [], threading.Lock()

        def submit(r, lo, hi):
            with Client(r.addr) as cl:
                for i in range(lo, hi):
                    jid = cl.submit(config(i)).id
                    with lock:
                        ids.append(jid)

        t0 = time.time()
        per = (jobs + len(reps) - 1) // len(reps)
        threads = [threading.Thread(target=submit, args=(r, k * per, min(jobs, (k + 1) * per)))
                   for k, r in enumerate(reps)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with Client(reps[-1].addr) as c:
            done = []
            for jid in ids:
                for j in c.watch(jid):
                    pass
                done.append(j)
        wall = time.time() - t0
        assert all(j.state == merge_pb2.JOB_STATE_SUCCEEDED for j in done)
        latencies = []
        for i in range(15):
            with Client(reps[i % len(reps)].addr) as c:
                jid = c.submit(config(10000 + i)).id
                for j in c.watch(jid):
                    pass
                latencies.append(ts(j.start_time) - ts(j.create_time))
        claim = statistics.median(latencies)

        # Failover: kill the replica running a large merge.
        with Client(reps[0].addr) as c:
            jid = c.submit(config(0, base="big-base").replace("expert", "big-expert")).id
            while True:
                j = c.job(jid)
                if j.state == merge_pb2.JOB_STATE_RUNNING and j.replica:
                    break
                time.sleep(0.01)
        victim = next(r for r in reps if r.replica_id == j.replica)
        time.sleep(0.2)
        victim.stop(signal.SIGKILL)
        killed = time.time()
        if len(reps) == 1:
            victim.start()
        alive = next(r for r in reps if r.proc.poll() is None)
        with Client(alive.addr) as c:
            while True:
                j = c.job(jid)
                if j.state == merge_pb2.JOB_STATE_RUNNING and j.attempt == 2:
                    break
                if j.state != merge_pb2.JOB_STATE_RUNNING and j.state != merge_pb2.JOB_STATE_QUEUED:
                    break
                time.sleep(0.01)
            takeover = time.time() - killed
            for j in c.watch(jid):
                pass
        assert j.state == merge_pb2.JOB_STATE_SUCCEEDED and j.attempt == 2, j
        return {"claim_ms": claim * 1000, "jobs_per_s": jobs / wall, "failover_s": takeover}
    finally:
        for r in reps:
            if r.proc and r.proc.poll() is None:
                r.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mergeserve_replbench_")
    pg = PgServer()
    try:
        small, big = os.path.join(tmp, "small"), os.path.join(tmp, "big")
        subprocess.run([sys.executable, MAKE_MODEL, small, "--experts", "2"], check=True,
                       capture_output=True)
        subprocess.run([sys.executable, MAKE_MODEL, big, "--hidden", "768", "--layers", "8",
                        "--intermediate", "2048", "--vocab", "16000", "--experts", "2"],
                       check=True, capture_output=True)
        rows = []
        for setup, n, pg_db in (("1 replica, SQLite", 1, False),
                                ("1 replica, PostgreSQL", 1, True),
                                ("3 replicas, PostgreSQL", 3, True)):
            results = []
            for k in range(args.repeat):
                url = pg.create_database(f"b{len(rows)}_{k}") if pg_db else None
                results.append(run(setup, n, url, small, big, args.jobs, tmp))
                print(setup, results[-1], file=sys.stderr)
            rows.append((setup, {key: statistics.median(r[key] for r in results)
                                 for key in results[0]}))
        print(f"| setup | claim latency (median) | small jobs/s ({args.jobs} jobs) "
              "| failover (kill -9 → running again) |")
        print("|---|---|---|---|")
        for setup, m in rows:
            print(f"| {setup} | {m['claim_ms']:.0f} ms | {m['jobs_per_s']:.1f} "
                  f"| {m['failover_s']:.1f} s |")
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
