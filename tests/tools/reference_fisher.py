#!/usr/bin/python3
"""The PyTorch computation the C++ Fisher is checked against: per-example
gradients of log p(y|x), squared, weighted by p(y|x) (exact) or for the true
label (empirical), averaged; float64 sums. Writes OUT.safetensors.

  reference_fisher.py PROGRAM.pt DATA.safetensors OUT.safetensors [exact|empirical] [N]
"""
import json
import struct
import sys
import time

import numpy as np
import torch


def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dt).reshape(v["shape"])
    return out


def main():
    program, data, out = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "exact"
    limit = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    m = torch.jit.load(program)
    params = dict(m.named_parameters())
    d = read(data)
    x = torch.tensor(d["inputs"].copy())
    y = torch.tensor(d["labels"].copy()) if "labels" in d else None
    n = len(x) if not limit else min(limit, len(x))
    sums = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    start = time.perf_counter()
    for i in range(n):
        logp = m(x[i:i + 1]).log_softmax(1)[0]
        p = logp.exp().detach()
        targets = ([(c, float(p[c])) for c in range(len(p))] if mode == "exact"
                   else [(int(y[i]), 1.0)])
        for t, (c, w) in enumerate(targets):
            grads = torch.autograd.grad(logp[c], list(params.values()),
                                        retain_graph=t + 1 < len(targets))
            for (k, _), g in zip(params.items(), grads):
                sums[k] += g.double() ** 2 * w
    print(f"seconds {time.perf_counter() - start:.6f}")
    header, blobs, off = {}, [], 0
    for k in sorted(sums):
        a = (sums[k] / n).float().numpy()
        header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


if __name__ == "__main__":
    main()
