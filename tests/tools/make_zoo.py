#!/usr/bin/python3
"""Builds a small model zoo on real data for the data-aware merging work:
scikit-learn's bundled handwritten digits (1797 8x8 images), a backbone
pre-trained on 10-class digit recognition, and four experts fine-tuned from
it on distinct tasks, each with its own head:

  parity   even / odd
  high     digit >= 5
  mod3     digit mod 3
  mirror   10-class recognition of left-right mirrored images

Writes, under OUT:
  base/model.safetensors              backbone.* only (what gets merged)
  <task>/model.safetensors            backbone.* + head.*
  <task>/program.pt                   TorchScript: inputs [n, 64] -> logits,
                                      parameter names == tensor names
  parity/program_traced.pt            the same, traced instead of scripted
  data/<task>_{eval,val,fisher}.safetensors   inputs (f32) and labels (i64):
                                      297 eval, 200 validation, 300 fisher
  data/<task>_aux.safetensors         200 unlabeled training inputs (RI)
  zoo.json                            tasks, sizes and each expert's accuracy

Deterministic (fixed seeds); takes a few seconds on a CPU.
"""
import argparse
import json
import os
import struct

import numpy as np
import torch
from sklearn.datasets import load_digits

HIDDEN = 64


class Net(torch.nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.backbone = torch.nn.Sequential(
            torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU())
        self.head = torch.nn.Linear(HIDDEN, classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def save_safetensors(path, tensors):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = {np.float32: "F32", np.int64: "I64"}[a.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def train(model, x, y, epochs, lr, params=None):
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    digits = load_digits()
    x_all = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    d_all = torch.tensor(digits.target, dtype=torch.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x_all))
    train_idx, fisher_idx = order[:1000], order[1000:1300]
    # Validation picks sweep points; eval reports them (never both).
    val_idx, eval_idx = order[1300:1500], order[1500:]
    mirrored = x_all.view(-1, 8, 8).flip(2).reshape(-1, 64)
    tasks = {
        "parity": (x_all, d_all % 2, 2),
        "high": (x_all, (d_all >= 5).long(), 2),
        "mod3": (x_all, d_all % 3, 3),
        "mirror": (mirrored, d_all, 10),
    }

    base = Net(10)
    train(base, x_all[train_idx], d_all[train_idx], epochs=15, lr=3e-3)
    backbone = {f"backbone.{k}": v.detach().numpy()
                for k, v in base.backbone.state_dict().items()}
    save_safetensors(os.path.join(args.out, "base", "model.safetensors"), backbone)

    report = {"dataset": "sklearn load_digits", "hidden": HIDDEN,
              "base_accuracy_digits": accuracy(base, x_all[eval_idx], d_all[eval_idx]),
              "tasks": {}}
    for name, (x, y, classes) in tasks.items():
        model = Net(classes)
        model.backbone.load_state_dict(base.backbone.state_dict())
        # A head trained on the frozen base backbone: what the base alone can do.
        train(model, x[train_idx], y[train_idx], epochs=10, lr=3e-3,
              params=model.head.parameters())
        base_acc = accuracy(model, x[eval_idx], y[eval_idx])
        train(model, x[train_idx], y[train_idx], epochs=15, lr=2e-3)
        acc = accuracy(model, x[eval_idx], y[eval_idx])
        tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        save_safetensors(os.path.join(args.out, name, "model.safetensors"), tensors)
        torch.jit.script(model).save(os.path.join(args.out, name, "program.pt"))
        if name == "parity":  # a traced program too: Gram capture takes both
            torch.jit.trace(model, x[:2]).save(
                os.path.join(args.out, name, "program_traced.pt"))
        for split, idx in (("eval", eval_idx), ("val", val_idx),
                           ("fisher", fisher_idx)):
            save_safetensors(os.path.join(args.out, "data", f"{name}_{split}.safetensors"),
                             {"inputs": x[idx].numpy(), "labels": y[idx].numpy()})
        save_safetensors(os.path.join(args.out, "data", f"{name}_aux.safetensors"),
                         {"inputs": x[train_idx[:200]].numpy()})
        report["tasks"][name] = {"classes": classes, "expert_accuracy": acc,
                                 "base_backbone_accuracy": base_acc,
                                 "eval_examples": len(eval_idx)}
    with open(os.path.join(args.out, "zoo.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report["tasks"], indent=1))


if __name__ == "__main__":
    main()
