#!/usr/bin/python3
"""Writes a small family of Llama-shaped Hugging Face checkpoints for tests,
the README demo and the benchmark: a base model and N experts fine-tuned from
it (base + a sparse-ish random task vector), plus a TIES config.

Uses only numpy (Debian's python3-numpy); bf16 is written by rounding fp32 to
nearest-even by hand.

  make_model.py OUT_DIR [--hidden 64] [--layers 2] [--intermediate 172]
                [--vocab 1000] [--experts 3] [--shards 1] [--dtype bf16]
"""
import argparse
import json
import os
import struct

import numpy as np


def to_bf16_bits(a):
    bits = a.astype(np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def tensor_names(hidden, layers, inter, vocab):
    shapes = {"model.embed_tokens.weight": (vocab, hidden),
              "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    return shapes


def write_folder(path, tensors, dtype, shards, config):
    os.makedirs(path, exist_ok=True)
    names = sorted(tensors)
    esize = 2 if dtype == "bf16" else 4
    total = sum(tensors[n].size * esize for n in names)
    per_shard = total / shards
    groups, cur, cur_bytes = [], [], 0
    for n in names:
        nb = tensors[n].size * esize
        if cur and cur_bytes + nb > per_shard * 1.0001 and len(groups) < shards - 1:
            groups.append(cur)
            cur, cur_bytes = [], 0
        cur.append(n)
        cur_bytes += nb
    groups.append(cur)
    weight_map = {}
    for i, group in enumerate(groups):
        fname = ("model.safetensors" if len(groups) == 1 else
                 f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors")
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for n in group:
            nb = tensors[n].size * esize
            header[n] = {"dtype": "BF16" if dtype == "bf16" else "F32",
                         "shape": list(tensors[n].shape),
                         "data_offsets": [off, off + nb]}
            off += nb
            weight_map[n] = fname
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(os.path.join(path, fname), "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for n in group:
                a = tensors[n]
                f.write((to_bf16_bits(a) if dtype == "bf16"
                         else a.astype(np.float32)).tobytes())
    if len(groups) > 1:
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total},
                       "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 2048}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=172)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    shapes = tensor_names(args.hidden, args.layers, args.intermediate, args.vocab)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": args.hidden, "num_hidden_layers": args.layers,
              "intermediate_size": args.intermediate,
              "vocab_size": args.vocab,
              "torch_dtype": "bfloat16" if args.dtype == "bf16" else "float32"}
    base = {}
    for n, s in shapes.items():
        if len(s) == 1:
            base[n] = np.ones(s, np.float32)
        else:
            base[n] = rng.standard_normal(s, dtype=np.float32) * np.float32(0.02)
    write_folder(os.path.join(args.out, "base"), base, args.dtype, args.shards, config)
    for e in range(args.experts):
        expert = {}
        for n, a in base.items():
            delta = rng.standard_normal(a.shape, dtype=np.float32)
            delta *= np.float32(0.002)
            expert[n] = a + delta
        write_folder(os.path.join(args.out, f"expert{e}"), expert, args.dtype,
                     args.shards, config)
        del expert
    models = "\n".join(
        f"  - model: expert{e}\n    parameters:\n      weight: 1.0\n"
        f"      density: {args.density}" for e in range(args.experts))
    with open(os.path.join(args.out, "ties.yaml"), "w") as f:
        f.write(f"merge_method: ties\nbase_model: base\nmodels:\n{models}\n"
                f"parameters:\n  normalize: true\n  lambda: 1.0\n")
    print(f"wrote base + {args.experts} experts ({sum(a.size for a in base.values())} "
          f"parameters each, {args.dtype}, {args.shards} shard(s)) to {args.out}")


if __name__ == "__main__":
    main()
