#!/usr/bin/python3
"""The PyTorch computation the C++ Gram capture is checked against (and
timed against in tests/bench/stats_bench.py): forward pre-hooks on every
nn.Linear of the zoo's eager model collect X^T X / n of each layer's input,
fp32 sums. Writes OUT.safetensors with one Gram per linear weight.

  reference_gram.py EXPERT_DIR DATA.safetensors OUT.safetensors [N] [BATCH]
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_zoo import Net, save_safetensors  # noqa: E402
from reference_fisher import read  # noqa: E402


def hook_grams(model, x, batch):
    """(seconds, {"<layer>.weight": X^T X / n}) over every nn.Linear of an
    eager model, collected by forward pre-hooks; fp32 sums."""
    sums, rows = {}, {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            def hook(_m, inp, name=name):
                a = inp[0].reshape(-1, inp[0].shape[-1])
                sums[name] = sums.get(name, 0) + a.T @ a
                rows[name] = rows.get(name, 0) + a.shape[0]
            mod.register_forward_pre_hook(hook)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    grams = {f"{k}.weight": sums[k] / rows[k] for k in sums}
    return time.perf_counter() - start, grams


def main():
    expert, data, out = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 128
    weights = {k: torch.from_numpy(v.copy())
               for k, v in read(os.path.join(expert, "model.safetensors")).items()}
    model = Net(weights["head.weight"].shape[0])
    model.load_state_dict(weights)
    x = torch.from_numpy(read(data)["inputs"].copy())
    if n:
        x = x[:n]
    seconds, grams = hook_grams(model, x, batch)
    print(f"seconds {seconds:.6f}")
    grams = {k: v.numpy() for k, v in grams.items()}
    save_safetensors(out, grams)


if __name__ == "__main__":
    main()
