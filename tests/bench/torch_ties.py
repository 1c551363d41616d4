#!/usr/bin/python3
"""The benchmark's peer: a straightforward PyTorch per-tensor TIES merge
(mergekit semantics: exact top-k trim per tensor via torch.kthvalue, weighted
sum election, disjoint mean by weight), the way a Python script would do it.
Loads each tensor with numpy memmap, computes in fp32, writes one
safetensors file.

  torch_ties.py BASE_DIR OUT_FILE EXPERT_DIR... [--density 0.2] [--threads N]
"""
import argparse
import json
import os
import resource
import struct
import time
import warnings

warnings.filterwarnings("ignore", message=".*non-writable.*")

import numpy as np
import torch

DTYPES = {"BF16": (np.uint16, torch.bfloat16), "F32": (np.float32, torch.float32),
          "F16": (np.float16, torch.float16)}


def open_folder(path):
    index = os.path.join(path, "model.safetensors.index.json")
    files = ([os.path.join(path, f) for f in
              sorted(set(json.load(open(index))["weight_map"].values()))]
             if os.path.exists(index) else [os.path.join(path, "model.safetensors")])
    tensors = {}
    for f in files:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        mm = np.memmap(f, dtype=np.uint8, mode="r")
        for name, info in header.items():
            if name == "__metadata__":
                continue
            tensors[name] = (mm, 8 + n, info)
    return tensors


def load(entry):
    mm, start, info = entry
    b, e = info["data_offsets"]
    npt, tt = DTYPES[info["dtype"]]
    arr = mm[start + b:start + e].view(np.int16 if npt == np.uint16 else npt)
    t = torch.from_numpy(arr)  # zero copy view of the memmap
    if npt == np.uint16:
        t = t.view(torch.bfloat16)
    return t.reshape(info["shape"]).float(), info["dtype"]


def ties_tensor(base, experts, density, weights):
    tvs = []
    for e in experts:
        tv = (e - base).flatten()
        k = int(density * tv.numel())
        if k <= 0:
            tv = torch.zeros_like(tv)
        elif k < tv.numel():
            thr = tv.abs().kthvalue(tv.numel() - k + 1).values
            tv = tv * (tv.abs() >= thr)
        tvs.append(tv)
    deltas = torch.stack(tvs)
    w = torch.tensor(weights).unsqueeze(1)
    wd = deltas * w
    sign = (wd.sum(0) >= 0).float() * 2 - 1
    mask = wd.sign() == sign
    mixed = (wd * mask).sum(0)
    div = (w * mask).sum(0)
    div[div == 0] = 1
    return base + (mixed / div).reshape(base.shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("out")
    ap.add_argument("experts", nargs="+")
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    base = open_folder(args.base)
    experts = [open_folder(e) for e in args.experts]
    out, header, off = {}, {}, 0
    for name in sorted(base):
        b, dt = load(base[name])
        es = [load(e[name])[0] for e in experts]
        merged = ties_tensor(b, es, args.density, [1.0] * len(es))
        t = merged.to(torch.bfloat16 if dt == "BF16" else torch.float32)
        raw = t.contiguous().view(torch.int16).numpy().tobytes() if dt == "BF16" \
            else t.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        out[name] = raw
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(args.out, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name in header:
            f.write(out[name])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": time.time() - start, "peak_rss_bytes": rss}))


if __name__ == "__main__":
    main()
