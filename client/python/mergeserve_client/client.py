"""The helper API over the generated mergeserve.v1 stubs.

The stubs are generated from proto/ at build time (into build/python); set
MERGESERVE_PY_STUBS to another folder if you built elsewhere.
"""
import hashlib
import json
import os
import shutil
import sys

import grpc

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_STUBS = os.path.join(_HERE, "..", "..", "..", "build", "python")
_STUBS = os.environ.get("MERGESERVE_PY_STUBS", _DEFAULT_STUBS)
if os.path.isdir(_STUBS) and _STUBS not in sys.path:
    sys.path.insert(0, _STUBS)

from mergeserve.v1 import merge_pb2, merge_pb2_grpc  # noqa: E402
from mergeserve.v1 import registry_pb2, registry_pb2_grpc  # noqa: E402

_ROLES = {"base": registry_pb2.CHECKPOINT_ROLE_BASE,
          "expert": registry_pb2.CHECKPOINT_ROLE_EXPERT,
          "auxiliary": registry_pb2.CHECKPOINT_ROLE_AUXILIARY}
_MODEL_FILES = ("model.safetensors.index.json", "config.json",
                "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json",
                "tokenizer.model", "vocab.json", "merges.txt")
_CHUNK = 1 << 20


class MergeError(RuntimeError):
    """A merge job that ended FAILED or CANCELLED."""

    def __init__(self, job):
        super().__init__(f"job {job.id} {merge_pb2.JobState.Name(job.state)}: "
                         f"{job.error_message}")
        self.job = job


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class Client:
    """A connection to one mergeserve server."""

    def __init__(self, address=None, timeout=600.0):
        self.address = address or os.environ.get("MERGESERVE_ADDR", "localhost:50051")
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", 4 << 20)])
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self.merges = merge_pb2_grpc.MergeServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- checkpoints -------------------------------------------------------
    def register(self, name, path, role="expert", base="", labels=None, upload=False):
        """Registers a server-side folder, or with upload=True streams a local
        folder to the server (every file SHA-256 checked)."""
        ckpt = registry_pb2.Checkpoint(name=name, role=_ROLES[role], base=base,
                                       labels=labels or {})
        if not upload:
            ckpt.path = path
            return self.registry.RegisterCheckpoint(
                registry_pb2.RegisterCheckpointRequest(checkpoint=ckpt),
                timeout=self.timeout)
        names = sorted(n for n in os.listdir(path)
                       if os.path.isfile(os.path.join(path, n)) and
                       (n.endswith(".safetensors") or n in _MODEL_FILES))
        header = registry_pb2.UploadHeader(checkpoint=ckpt)
        for n in names:
            full = os.path.join(path, n)
            header.files.add(name=n, size_bytes=os.path.getsize(full), sha256=_sha256(full))

        def requests():
            yield registry_pb2.UploadCheckpointRequest(header=header)
            for n in names:
                with open(os.path.join(path, n), "rb") as f:
                    offset = 0
                    for block in iter(lambda: f.read(_CHUNK), b""):
                        yield registry_pb2.UploadCheckpointRequest(
                            chunk=registry_pb2.UploadChunk(file=n, offset=offset, data=block))
                        offset += len(block)

        return self.registry.UploadCheckpoint(requests(), timeout=self.timeout)

    def checkpoints(self, role=None):
        req = registry_pb2.ListCheckpointsRequest(role=_ROLES[role] if role else 0)
        return list(self.registry.ListCheckpoints(req, timeout=self.timeout).checkpoints)

    def delete(self, name):
        self.registry.DeleteCheckpoint(registry_pb2.DeleteCheckpointRequest(name=name),
                                       timeout=self.timeout)

    # --- merges --------------------------------------------------------------
    def submit(self, config):
        """Queues a merge. `config` is mergekit YAML text, or a dict in the same
        vocabulary (JSON is YAML)."""
        text = config if isinstance(config, str) else json.dumps(config)
        spec = merge_pb2.MergeSpec(config_yaml=text)
        return self.merges.CreateMergeJob(merge_pb2.CreateMergeJobRequest(spec=spec),
                                          timeout=self.timeout)

    def watch(self, job_id):
        """Yields the job after every change until it ends."""
        for event in self.merges.WatchMergeJob(merge_pb2.WatchMergeJobRequest(id=job_id)):
            yield event.job

    def merge(self, config, on_progress=None):
        """Submits and waits; raises MergeError if the job does not succeed."""
        job = self.submit(config)
        for job in self.watch(job.id):
            if on_progress:
                on_progress(job)
        if job.state != merge_pb2.JOB_STATE_SUCCEEDED:
            raise MergeError(job)
        return job

    def job(self, job_id):
        return self.merges.GetMergeJob(merge_pb2.GetMergeJobRequest(id=job_id),
                                       timeout=self.timeout)

    def cancel(self, job_id):
        return self.merges.CancelMergeJob(merge_pb2.CancelMergeJobRequest(id=job_id),
                                          timeout=self.timeout)

    def download(self, job_id, dest):
        """Fetches a finished job's Hugging Face folder into `dest`. Files land
        in dest.partial first (a rerun resumes them), are checked against
        their SHA-256, and the folder is renamed into place at the end."""
        job = self.job(job_id)
        if job.state != merge_pb2.JOB_STATE_SUCCEEDED:
            raise MergeError(job)
        partial = dest + ".partial"
        os.makedirs(partial, exist_ok=True)
        for f in job.files:
            path = os.path.join(partial, f.name)
            have = os.path.getsize(path) if os.path.exists(path) else 0
            if have > f.size_bytes:
                os.remove(path)
                have = 0
            if have < f.size_bytes or not os.path.exists(path):
                req = merge_pb2.DownloadMergeResultRequest(id=job_id, file=f.name, offset=have)
                with open(path, "ab") as out:
                    for chunk in self.merges.DownloadMergeResult(req):
                        if chunk.offset != have:
                            raise IOError(f"{f.name}: chunk at {chunk.offset}, expected {have}")
                        out.write(chunk.data)
                        have += len(chunk.data)
            if _sha256(path) != f.sha256:
                os.remove(path)
                raise IOError(f"{f.name} failed its SHA-256 check; download again")
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.rename(partial, dest)
        return dest
