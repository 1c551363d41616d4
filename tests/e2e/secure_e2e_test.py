#!/usr/bin/python3
"""End to end, as a shared deployment runs: the real `mergeserve serve` over
TLS (certificates made with the openssl CLI) with bearer tokens, driven by
`mergectl` and by the Python client as an admin, a writer, a reader and a
writer of another team; tokens created with `mergeserve token` and over
the API; results compared bit for bit with a one-shot `mergeserve merge`;
the audit log read back.

Run by CTest with MERGESERVE_BIN, MERGECTL_BIN and MERGESERVE_PY_STUBS set.
"""
import filecmp
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_test import MAKE_MODEL, MERGECTL, MERGESERVE, free_ports  # noqa: E402
from mergeserve_client import Client  # noqa: E402
from mergeserve.v1 import merge_pb2  # noqa: E402

import grpc  # noqa: E402


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d):
    """A CA and a server certificate for localhost / 127.0.0.1."""
    os.makedirs(d)
    p = lambda n: os.path.join(d, n)  # noqa: E731
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p("ca.key"))
    openssl("req", "-x509", "-new", "-key", p("ca.key"), "-out", p("ca.pem"), "-days", "2",
            "-subj", "/CN=e2e-ca")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p("tls.key"))
    openssl("req", "-new", "-key", p("tls.key"), "-out", p("tls.csr"), "-subj", "/CN=localhost")
    with open(p("san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", p("tls.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
            "-CAcreateserial", "-out", p("tls.crt"), "-days", "2", "-extfile", p("san.ext"))
    return p("ca.pem"), p("tls.crt"), p("tls.key")


class SecureEndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mergeserve_secure_e2e_")
        cls.models = os.path.join(cls.tmp, "models")
        subprocess.run([sys.executable, MAKE_MODEL, cls.models, "--experts", "3"],
                       check=True, capture_output=True)
        cls.ca, cert, key = make_pki(os.path.join(cls.tmp, "pki"))
        cls.data = os.path.join(cls.tmp, "data")
        # The first admin token, made on the server's host before it starts.
        r = subprocess.run([MERGESERVE, "token", "create", "--data-dir", cls.data,
                            "--tenant", "teamA", "--role", "admin", "--description", "ops"],
                           check=True, capture_output=True, text=True)
        cls.admin = r.stdout.strip().splitlines()[-1]
        cls.port, = free_ports(1)
        cls.addr = f"localhost:{cls.port}"
        cls.log = open(os.path.join(cls.tmp, "serve.log"), "w")
        cls.proc = subprocess.Popen(
            [MERGESERVE, "serve", "--auth=token", f"--tls-cert={cert}", f"--tls-key={key}",
             f"--listen=127.0.0.1:{cls.port}", "--metrics-listen=", f"--data-dir={cls.data}",
             f"--allow-root={cls.models}"],
            stdout=cls.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", cls.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        cls.tokens = {"admin": cls.admin}

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(timeout=60)
        cls.log.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def ctl(self, who, *args, expect=0, ca=True):
        env = dict(os.environ)
        env.pop("MERGESERVE_TOKEN", None)
        env.pop("MERGESERVE_CA_CERT", None)
        if who:
            env["MERGESERVE_TOKEN"] = self.tokens[who]
        if ca:
            env["MERGESERVE_CA_CERT"] = self.ca
        r = subprocess.run([MERGECTL, "--server", self.addr, *args], env=env,
                           capture_output=True, text=True)
        if expect is not None:
            self.assertEqual(r.returncode, expect,
                             f"mergectl {' '.join(args)} as {who}: {r.stderr}")
        return r

    def new_token(self, tenant, role):
        r = self.ctl("admin", "token", "create", "--tenant", tenant, "--role", role)
        return r.stdout.strip().splitlines()[-1]

    def test_1_identity_is_required_and_checked(self):
        r = self.ctl(None, "list", expect=11)
        self.assertIn("token", r.stderr)
        self.tokens["bogus"] = "mst_000000000000_" + "0" * 64
        self.ctl("bogus", "list", expect=11)
        # Plaintext or an untrusting client never gets a TLS session.
        self.ctl("admin", "list", ca=False, expect=8)

    def test_2_a_team_registers_merges_and_downloads_over_tls(self):
        self.tokens["writer"] = self.new_token("teamA", "writer")
        self.tokens["reader"] = self.new_token("teamA", "reader")
        m = self.models
        self.ctl("writer", "register", "base", os.path.join(m, "base"), "--role", "base")
        self.ctl("writer", "register", "e0", os.path.join(m, "expert0"), "--base", "base")
        self.ctl("writer", "register", "e1", os.path.join(m, "expert1"), "--base", "base",
                 "--upload")
        yaml_text = ("merge_method: ties\nbase_model: base\nmodels:\n"
                     "  - model: e0\n    parameters: {density: 0.3}\n"
                     "  - model: e1\n    parameters: {density: 0.5}\n")
        cfg = os.path.join(self.tmp, "ties.yaml")
        with open(cfg, "w") as f:
            f.write(yaml_text)
        served = os.path.join(self.tmp, "served")
        self.ctl("writer", "merge", cfg, "--output", served)
        # The same merge one-shot, from the folders.
        local_cfg = os.path.join(m, "local.yaml")
        with open(local_cfg, "w") as f:
            f.write(yaml_text.replace("e0", "expert0").replace("e1", "expert1"))
        local = os.path.join(self.tmp, "local")
        subprocess.run([MERGESERVE, "merge", local_cfg, local, "--quiet"], check=True)
        self.assertTrue(filecmp.cmp(os.path.join(served, "model.safetensors"),
                                    os.path.join(local, "model.safetensors"), shallow=False))
        # A reader reads but may not merge.
        self.assertIn('"name":"e1"', self.ctl("reader", "--json", "list").stdout)
        r = self.ctl("reader", "merge", cfg, expect=6)
        self.assertIn("needs writer", r.stderr)
        # The uploaded checkpoint does not show where the server keeps it.
        shown = json.loads(self.ctl("reader", "--json", "show", "e1").stdout)
        self.assertTrue(shown["uploaded"])
        self.assertEqual(shown["path"], "")

    def test_3_another_team_sees_nothing_of_the_first(self):
        self.tokens["other"] = self.new_token("teamB", "writer")
        self.ctl("other", "show", "e0", expect=3)
        self.assertEqual(json.loads(self.ctl("other", "--json", "list").stdout), [])
        self.assertEqual(json.loads(self.ctl("other", "--json", "jobs").stdout), [])
        a_jobs = json.loads(self.ctl("writer", "--json", "jobs").stdout)
        self.ctl("other", "download", a_jobs[0]["id"], os.path.join(self.tmp, "x"), expect=3)
        # Once the admin publishes teamA's base, teamB builds on it.
        self.ctl("admin", "publish", "base")
        self.ctl("other", "register", "b0", os.path.join(self.models, "expert2"),
                 "--base", "base")
        # Over its stored-bytes quota, an upload is refused naming the quota.
        self.ctl("admin", "--tenant", "teamB", "quota", "set", "--max-stored-bytes", "1")
        r = self.ctl("other", "register", "b1", os.path.join(self.models, "expert1"),
                     "--base", "base", "--upload", expect=9)
        self.assertIn("max_stored_bytes", r.stderr)

    def test_4_python_client_with_token_and_ca(self):
        with Client(self.addr, token=self.tokens["writer"], ca_cert=self.ca) as c:
            names = [cp.name for cp in c.checkpoints()]
            self.assertIn("e0", names)
            job = c.merge({"merge_method": "task_arithmetic", "base_model": "base",
                           "models": [{"model": "e0"}], "parameters": {"lambda": 0.5}})
            self.assertEqual(job.state, merge_pb2.JOB_STATE_SUCCEEDED)
            self.assertEqual(job.tenant, "teamA")
            out = c.download(job.id, os.path.join(self.tmp, "py_out"))
            self.assertTrue(os.path.exists(os.path.join(out, "model.safetensors")))
            c.delete_job(job.id)
            with self.assertRaises(grpc.RpcError) as e:
                c.job(job.id)
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        with Client(self.addr, token=self.tokens["other"], ca_cert=self.ca) as c:
            with self.assertRaises(grpc.RpcError) as e:
                c.submit({"merge_method": "task_arithmetic", "base_model": "base",
                          "models": ["e0"]})
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        with Client(self.addr, token=self.admin, ca_cert=self.ca) as c:
            token, secret = c.create_token("reader", tenant="teamC")
            self.assertTrue(secret.startswith("mst_"))
            self.assertIn(token.id, [t.id for t in c.tokens("teamC")])

    def test_5_revoked_tokens_stop_working_and_everything_is_audited(self):
        listed = json.loads(self.ctl("admin", "--json", "token", "list", "teamA").stdout)
        writer_id = "tok_" + self.tokens["writer"][4:16]
        self.assertIn(writer_id, [t["id"] for t in listed])
        self.ctl("admin", "token", "revoke", writer_id)
        r = self.ctl("writer", "list", expect=11)
        self.assertIn("revoked", r.stderr)
        lines = [json.loads(line) for line in
                 open(os.path.join(self.data, "audit.log")) if line.strip()]
        codes = {(e["method"].split("/")[-1], e["code"]) for e in lines}
        self.assertIn(("RevokeToken", "OK"), codes)
        self.assertIn(("CreateMergeJob", "PERMISSION_DENIED"), codes)
        self.assertIn(("ListCheckpoints", "UNAUTHENTICATED"), codes)
        for e in lines:
            for key in ("ts", "tenant", "token_id", "peer", "method", "resource", "code"):
                self.assertIn(key, e)
        text = open(os.path.join(self.data, "audit.log")).read()
        for secret in self.tokens.values():
            self.assertNotIn(secret[17:], text)


if __name__ == "__main__":
    unittest.main(verbosity=2)
