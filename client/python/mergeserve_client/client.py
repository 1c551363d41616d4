"""The helper API over the generated mergeserve.v1 stubs.

The stubs are generated from proto/ at build time (into build/python); set
MERGESERVE_PY_STUBS to another folder if you built elsewhere.
"""
import hashlib
import json
import os
import shutil
import sys
import time

import grpc

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_STUBS = os.path.join(_HERE, "..", "..", "..", "build", "python")
_STUBS = os.environ.get("MERGESERVE_PY_STUBS", _DEFAULT_STUBS)
if os.path.isdir(_STUBS) and _STUBS not in sys.path:
    sys.path.insert(0, _STUBS)

from mergeserve.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402
from mergeserve.v1 import merge_pb2, merge_pb2_grpc  # noqa: E402
from mergeserve.v1 import registry_pb2, registry_pb2_grpc  # noqa: E402

_ROLES = {"base": registry_pb2.CHECKPOINT_ROLE_BASE,
          "expert": registry_pb2.CHECKPOINT_ROLE_EXPERT,
          "auxiliary": registry_pb2.CHECKPOINT_ROLE_AUXILIARY}
_MODEL_FILES = ("model.safetensors.index.json", "config.json",
                "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json",
                "tokenizer.model", "vocab.json", "merges.txt")
_DATASET_ROLES = {"eval": registry_pb2.DATASET_ROLE_EVAL,
                  "validation": registry_pb2.DATASET_ROLE_VALIDATION,
                  "fisher": registry_pb2.DATASET_ROLE_FISHER,
                  "auxiliary": registry_pb2.DATASET_ROLE_AUXILIARY}
_CHUNK = 1 << 20
_RECONNECTS = 10


def _service_config():
    """The retry policy both clients use (proto/mergeserve/v1/
    service_config.json; the installed package carries a copy)."""
    for path in (os.path.join(_HERE, "service_config.json"),
                 os.path.join(_HERE, "..", "..", "..", "proto", "mergeserve", "v1",
                              "service_config.json")):
        if os.path.exists(path):
            with open(path) as f:
                return json.dumps(json.load(f))
    return None


def _unavailable(err):
    return isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE


def _backoff(attempt):
    time.sleep(min(5.0, 0.2 * (2 ** attempt)))


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


class _Identity(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the bearer token and the acting tenant to every call."""

    class _Details(grpc.ClientCallDetails):
        def __init__(self, d, metadata):
            self.method, self.timeout, self.credentials = d.method, d.timeout, d.credentials
            self.wait_for_ready = getattr(d, "wait_for_ready", None)
            self.compression = getattr(d, "compression", None)
            self.metadata = metadata

    def __init__(self, metadata):
        self._metadata = metadata

    def _details(self, d):
        return self._Details(d, list(d.metadata or []) + self._metadata)

    def intercept_unary_unary(self, continuation, d, request):
        return continuation(self._details(d), request)

    def intercept_unary_stream(self, continuation, d, request):
        return continuation(self._details(d), request)

    def intercept_stream_unary(self, continuation, d, requests):
        return continuation(self._details(d), requests)

    def intercept_stream_stream(self, continuation, d, requests):
        return continuation(self._details(d), requests)


class Client:
    """A connection to one mergeserve server.

    token: a bearer token (default $MERGESERVE_TOKEN). ca_cert: the PEM file
    of the CA that signed the server's certificate, which turns on TLS
    (default $MERGESERVE_CA_CERT); tls=True uses the system's CAs instead.
    cert/key: a client certificate for mutual TLS. tenant: act in another
    tenant (admins only)."""

    def __init__(self, address=None, timeout=600.0, token=None, ca_cert=None,
                 cert=None, key=None, tls=False, tenant=None):
        self.address = address or os.environ.get("MERGESERVE_ADDR", "localhost:50051")
        self.timeout = timeout
        token = token if token is not None else os.environ.get("MERGESERVE_TOKEN", "")
        ca_cert = ca_cert if ca_cert is not None else os.environ.get("MERGESERVE_CA_CERT", "")
        # Idempotent calls retry on UNAVAILABLE: behind a Kubernetes Service
        # or a list of addresses ("ipv4:10.0.0.1:50051,10.0.0.2:50051") the
        # retry reaches another replica.
        options = [("grpc.max_receive_message_length", 4 << 20),
                   ("grpc.enable_retries", 1)]
        config = _service_config()
        if config:
            options.append(("grpc.service_config", config))
        if tls or ca_cert or cert:
            def read(path):
                with open(path, "rb") as f:
                    return f.read()
            creds = grpc.ssl_channel_credentials(
                root_certificates=read(ca_cert) if ca_cert else None,
                private_key=read(key) if key else None,
                certificate_chain=read(cert) if cert else None)
            channel = grpc.secure_channel(self.address, creds, options=options)
        else:
            channel = grpc.insecure_channel(self.address, options=options)
        self._raw_channel = channel
        metadata = []
        if token:
            metadata.append(("authorization", "Bearer " + token))
        if tenant:
            metadata.append(("x-mergeserve-tenant", tenant))
        self._channel = grpc.intercept_channel(channel, _Identity(metadata))
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self.merges = merge_pb2_grpc.MergeServiceStub(self._channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self):
        self._raw_channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- checkpoints -------------------------------------------------------
    def register(self, name, path, role="expert", base="", labels=None, upload=False,
                 program="", task=""):
        """Registers a server-side folder, or with upload=True streams a local
        folder to the server (every file SHA-256 checked). `program` is the
        expert's TorchScript program (a server path, or a local file when
        uploading; a folder's program.pt is attached without asking) and
        `task` the task it solves."""
        ckpt = registry_pb2.Checkpoint(name=name, role=_ROLES[role], base=base,
                                       labels=labels or {}, task=task)
        if not upload:
            ckpt.path = path
            ckpt.program = program
            return self.registry.RegisterCheckpoint(
                registry_pb2.RegisterCheckpointRequest(checkpoint=ckpt),
                timeout=self.timeout)
        files = [(n, os.path.join(path, n)) for n in sorted(os.listdir(path))
                 if os.path.isfile(os.path.join(path, n)) and
                 (n.endswith(".safetensors") or n in _MODEL_FILES or
                  (n == "program.pt" and not program))]
        if program:
            files.append(("program.pt", program))
        header = registry_pb2.UploadHeader(checkpoint=ckpt)
        return self.registry.UploadCheckpoint(self._upload(header, files),
                                              timeout=self.timeout)

    def _upload(self, header, files):
        """The request stream of an upload: the header, then 1 MiB chunks."""
        for n, full in files:
            header.files.add(name=n, size_bytes=os.path.getsize(full), sha256=_sha256(full))
        yield registry_pb2.UploadCheckpointRequest(header=header)
        for n, full in files:
            with open(full, "rb") as f:
                offset = 0
                for block in iter(lambda: f.read(_CHUNK), b""):
                    yield registry_pb2.UploadCheckpointRequest(
                        chunk=registry_pb2.UploadChunk(file=n, offset=offset, data=block))
                    offset += len(block)

    # --- datasets ------------------------------------------------------------
    def register_dataset(self, name, path, task, role, upload=False):
        """A task's data (safetensors with `inputs` and `labels`): role is
        eval, validation, fisher or auxiliary."""
        ds = registry_pb2.Dataset(name=name, task=task, role=_DATASET_ROLES[role])
        if not upload:
            ds.path = path
            return self.registry.RegisterDataset(
                registry_pb2.RegisterDatasetRequest(dataset=ds), timeout=self.timeout)
        header = registry_pb2.UploadHeader(dataset=ds)
        return self.registry.UploadDataset(
            self._upload(header, [(os.path.basename(path), path)]), timeout=self.timeout)

    def _all_pages(self, call, req, field):
        out = []
        req.page_size = 1000
        while True:
            page = call(req, timeout=self.timeout)
            out.extend(getattr(page, field))
            if not page.next_page_token:
                return out
            req.page_token = page.next_page_token

    def datasets(self, task="", role=None):
        req = registry_pb2.ListDatasetsRequest(
            task=task, role=_DATASET_ROLES[role] if role else 0)
        return self._all_pages(self.registry.ListDatasets, req, "datasets")

    def checkpoints(self, role=None):
        req = registry_pb2.ListCheckpointsRequest(role=_ROLES[role] if role else 0)
        return self._all_pages(self.registry.ListCheckpoints, req, "checkpoints")

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
        """Yields the job after every change until it ends. A stream broken
        by its replica going away is opened again (on another replica); the
        first event then is the job as it is now."""
        for attempt in range(_RECONNECTS + 1):
            try:
                for event in self.merges.WatchMergeJob(
                        merge_pb2.WatchMergeJobRequest(id=job_id)):
                    yield event.job
                return
            except grpc.RpcError as err:
                if not _unavailable(err) or attempt == _RECONNECTS:
                    raise
                _backoff(attempt)

    def merge(self, config, on_progress=None):
        """Submits and waits; raises MergeError if the job does not succeed."""
        job = self.submit(config)
        for job in self.watch(job.id):
            if on_progress:
                on_progress(job)
        if job.state != merge_pb2.JOB_STATE_SUCCEEDED:
            raise MergeError(job)
        return job

    def _follow(self, open_stream, key):
        """Yields a job stream's events; a stream broken by its replica going
        away is opened again with the same request (on another replica),
        which follows the same job: events already yielded (same `key`) are
        skipped."""
        seen = set()
        for attempt in range(_RECONNECTS + 1):
            try:
                for event in open_stream():
                    k = key(event)
                    if k is not None:
                        if k in seen:
                            continue
                        seen.add(k)
                    yield event
                return
            except grpc.RpcError as err:
                if not _unavailable(err) or attempt == _RECONNECTS:
                    raise
                _backoff(attempt)

    def evaluate(self, job_id=None, checkpoint=None, tasks=(), max_examples=0):
        """Yields EvaluateEvents: the merge job's progress while it runs, the
        evaluation's own job (`evaluation`: a job of kind "evaluate" that
        runs on if the caller stops; cancel(id) stops it), progress per
        batch, a TaskMetrics per task, then the summary. The same request
        again follows the same job (its tasks replayed)."""
        req = merge_pb2.EvaluateRequest(tasks=list(tasks), max_examples=max_examples)
        if job_id:
            req.job_id = job_id
        elif checkpoint:
            req.checkpoint = checkpoint
        yield from self._follow(
            lambda: self.merges.Evaluate(req),
            lambda e: ("task", e.task.task) if e.HasField("task") else None)

    def sweep(self, config, lambdas=(), densities=(), axes=None, tasks=()):
        """Yields SweepEvents: the sweep's job first (`job`: a job of kind
        "sweep" that runs on if the caller stops; cancel(id) stops it), a
        point per grid point, then the summary (the best point). `axes` maps
        other parameters ("alpha", "weight@MODEL") to their values. The same
        request again follows the same job (its points replayed)."""
        text = config if isinstance(config, str) else json.dumps(config)
        req = merge_pb2.SweepRequest(spec=merge_pb2.MergeSpec(config_yaml=text),
                                     lambdas=list(lambdas), densities=list(densities),
                                     tasks=list(tasks))
        for name, values in (axes or {}).items():
            req.axes.add(parameter=name, values=list(values))
        yield from self._follow(
            lambda: self.merges.Sweep(req),
            lambda e: ("point", e.point.index) if e.HasField("point") else None)

    def job(self, job_id):
        return self.merges.GetMergeJob(merge_pb2.GetMergeJobRequest(id=job_id),
                                       timeout=self.timeout)

    def cancel(self, job_id):
        return self.merges.CancelMergeJob(merge_pb2.CancelMergeJobRequest(id=job_id),
                                          timeout=self.timeout)

    def jobs(self, state=None):
        """Summaries of the tenant's jobs (no config), oldest first."""
        req = merge_pb2.ListMergeJobsRequest(state=state or 0)
        return self._all_pages(self.merges.ListMergeJobs, req, "jobs")

    def delete_job(self, job_id):
        """Forgets a finished job and removes its result."""
        self.merges.DeleteMergeJob(merge_pb2.DeleteMergeJobRequest(id=job_id),
                                   timeout=self.timeout)

    # --- administration (admin tokens) -----------------------------------------
    def create_token(self, role, tenant="", ttl_seconds=0, description=""):
        """A new API token: (its record, the secret to hand out, shown once)."""
        resp = self.admin.CreateToken(admin_pb2.CreateTokenRequest(
            tenant=tenant, role=admin_pb2.Role.Value("ROLE_" + role.upper()),
            ttl_seconds=ttl_seconds, description=description), timeout=self.timeout)
        return resp.token, resp.secret

    def tokens(self, tenant=""):
        return list(self.admin.ListTokens(admin_pb2.ListTokensRequest(tenant=tenant),
                                          timeout=self.timeout).tokens)

    def revoke_token(self, token_id):
        return self.admin.RevokeToken(admin_pb2.RevokeTokenRequest(id=token_id),
                                      timeout=self.timeout)

    def quota(self, tenant=""):
        return self.admin.GetQuota(admin_pb2.GetQuotaRequest(tenant=tenant),
                                   timeout=self.timeout)

    def set_quota(self, tenant="", **limits):
        """limits: max_jobs, max_stored_bytes, max_upload_bytes, max_streams
        (0 = unlimited)."""
        return self.admin.SetQuota(admin_pb2.SetQuotaRequest(
            tenant=tenant, quota=admin_pb2.Quota(**limits)), timeout=self.timeout)

    def publish(self, name, published=True):
        """Shows a checkpoint to every tenant (only admins delete it then)."""
        return self.admin.PublishCheckpoint(admin_pb2.PublishCheckpointRequest(
            name=name, published=published), timeout=self.timeout)

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
            attempt = 0
            while have < f.size_bytes or not os.path.exists(path):
                req = merge_pb2.DownloadMergeResultRequest(id=job_id, file=f.name, offset=have)
                try:
                    with open(path, "ab") as out:
                        for chunk in self.merges.DownloadMergeResult(req):
                            if chunk.offset != have:
                                raise IOError(
                                    f"{f.name}: chunk at {chunk.offset}, expected {have}")
                            out.write(chunk.data)
                            have += len(chunk.data)
                    break
                except grpc.RpcError as err:
                    # The replica went away mid-file: resume from `have`.
                    if not _unavailable(err) or attempt == _RECONNECTS:
                        raise
                    _backoff(attempt)
                    attempt += 1
            if _sha256(path) != f.sha256:
                os.remove(path)
                raise IOError(f"{f.name} failed its SHA-256 check; download again")
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.rename(partial, dest)
        return dest
