#!/usr/bin/env python3
"""The Python client installs as a package, offline: a venv over Debian's
python3-grpcio/protobuf, `pip install --no-build-isolation --no-index`, the
stubs generated at build time and packaged; the installed client then talks
to a real server from outside the source tree."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_test import ROOT, Server  # noqa: E402

CHECK = r"""
import sys
import mergeserve_client
from mergeserve.v1 import merge_pb2
from mergeserve_client.client import _service_config
assert "site-packages" in mergeserve_client.__file__, mergeserve_client.__file__
assert "replica" in merge_pb2.MergeJob.DESCRIPTOR.fields_by_name
assert "retryPolicy" in _service_config()
with mergeserve_client.Client(sys.argv[1]) as c:
    print("checkpoints:", len(list(c.checkpoints())))
    print("jobs:", len(list(c.jobs())))
"""


class Package(unittest.TestCase):
    def test_offline_install_and_use(self):
        tmp = tempfile.mkdtemp(prefix="mergeserve_pkg_")
        try:
            # A copy, so the build leaves nothing in the checkout.
            shutil.copytree(os.path.join(ROOT, "client", "python"),
                            os.path.join(tmp, "src", "client", "python"),
                            ignore=shutil.ignore_patterns("build", "*.egg-info"))
            shutil.copytree(os.path.join(ROOT, "proto"), os.path.join(tmp, "src", "proto"))
            venv = os.path.join(tmp, "venv")
            subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv],
                           check=True)
            pip = subprocess.run(
                [os.path.join(venv, "bin", "pip"), "install", "--no-build-isolation",
                 "--no-index", os.path.join(tmp, "src", "client", "python")],
                capture_output=True, text=True)
            self.assertEqual(pip.returncode, 0, pip.stdout + pip.stderr)
            data = os.path.join(tmp, "data")
            server = Server(data, []).start()
            try:
                env = {k: v for k, v in os.environ.items() if k != "MERGESERVE_PY_STUBS"}
                r = subprocess.run([os.path.join(venv, "bin", "python"), "-c", CHECK,
                                    server.addr], capture_output=True, text=True, cwd=tmp,
                                   env=env)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("checkpoints: 0", r.stdout)
            finally:
                server.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
