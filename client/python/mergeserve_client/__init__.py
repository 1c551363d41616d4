"""Python client of the mergeserve gRPC API (Debian's python3-grpcio).

    from mergeserve_client import Client
    c = Client("localhost:50051")
    c.register("llama-base", "/models/base", role="base")
    job = c.merge(open("ties.yaml").read())          # waits, with progress
    c.download(job.id, "./merged")                   # a ready HF folder
"""
from .client import Client, MergeError

__all__ = ["Client", "MergeError"]
