"""Builds the gRPC stubs into the package (never committed): protoc with
grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc)
over ../../proto, or, without them, the stubs a CMake build made
($MERGESERVE_PY_STUBS or ../../build/python). Everything else is in
pyproject.toml. Offline install:

    python3 -m venv --system-site-packages venv
    venv/bin/pip install --no-build-isolation --no-index ./client/python
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTOS = ["mergeserve/v1/registry.proto", "mergeserve/v1/merge.proto",
          "mergeserve/v1/admin.proto"]


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        out = self.build_lib
        v1 = os.path.join(out, "mergeserve", "v1")
        os.makedirs(v1, exist_ok=True)
        protoc, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
        if protoc and plugin and os.path.isdir(PROTO):
            subprocess.run([protoc, f"--proto_path={PROTO}", f"--python_out={out}",
                            f"--grpc_python_out={out}",
                            f"--plugin=protoc-gen-grpc_python={plugin}", *PROTOS],
                           check=True)
        else:
            built = os.environ.get("MERGESERVE_PY_STUBS",
                                   os.path.join(HERE, "..", "..", "build", "python"))
            src = os.path.join(built, "mergeserve", "v1")
            if not os.path.isdir(src):
                raise SystemExit("no protoc/grpc_python_plugin and no built stubs in "
                                 + built)
            for name in os.listdir(src):
                if name.endswith(".py"):
                    shutil.copy(os.path.join(src, name), v1)
        for pkg in (os.path.join(out, "mergeserve"), v1):
            open(os.path.join(pkg, "__init__.py"), "a").close()
        shutil.copy(os.path.join(PROTO, "mergeserve", "v1", "service_config.json"),
                    os.path.join(out, "mergeserve_client", "service_config.json"))


setup(cmdclass={"build_py": BuildWithStubs})
