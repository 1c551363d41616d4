#!/usr/bin/env python3
"""Every configuration of mergekit's examples/ (verbatim, Hub ids resolved
from a Hugging Face cache folder this test fills with tiny Llama-shaped
models) and the configurations mergekit's tests construct (rewritten to
local tiny models; tests/mergekit_examples/README.md lists them) runs
through `mergeserve mergekit-yaml`, and the output is compared with
mergekit's math restated here in float64 (tensor by tensor, within the
output dtype's rounding). Methods whose math depends on a random draw or
is pinned by a golden-mergekit case are checked for running, names, shapes
and finiteness; configs mergekit rejects must be rejected."""
import json
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unittest

import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "mergekit_examples")
BIN = os.environ.get("MERGESERVE_BIN", "mergeserve")

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_model(folder):
    out = {}
    for fn in sorted(os.listdir(folder)):
        if not fn.endswith(".safetensors"):
            continue
        with open(os.path.join(folder, fn), "rb") as f:
            data = f.read()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            buf = bytearray(data[8 + n + b:8 + n + e])
            t = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]) if buf else \
                torch.zeros(0, dtype=DTYPES[info["dtype"]])
            out[name] = t.reshape(info["shape"]).clone()
    return out


def randn(g, dtype):
    """A sampler of N(0, 0.5²) tensors of `dtype` from generator `g`."""
    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    return r


def make_llama(folder, layers, seed, dtype, tokenizer=False):
    """A Llama-shaped model: hidden 8, 32 tokens."""
    g = torch.Generator().manual_seed(seed)
    t = {}
    r = randn(g, dtype)
    t["model.embed_tokens.weight"] = r(32, 8)
    t["lm_head.weight"] = r(32, 8)
    t["model.norm.weight"] = r(8)
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{m}.weight"] = r(8, 8)
        t[p + "mlp.gate_proj.weight"] = r(16, 8)
        t[p + "mlp.up_proj.weight"] = r(16, 8)
        t[p + "mlp.down_proj.weight"] = r(8, 16)
        t[p + "input_layernorm.weight"] = r(8)
        t[p + "post_attention_layernorm.weight"] = r(8)
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, "model.safetensors"), t)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": layers,
              "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 32,
              "torch_dtype": str(dtype).replace("torch.", "")}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    if tokenizer:
        vocab = {f"t{i}": i for i in range(32)}
        with open(os.path.join(folder, "tokenizer.json"), "w") as f:
            json.dump({"version": "1.0", "added_tokens": [],
                       "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}}, f)
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": "t1", "eos_token": "t2", "unk_token": "t0"}, f)


def make_gpt2(folder, layers, seed, dtype):
    """GPT-2's tensor names (transformer.h.N, tied embeddings, n_layer)."""
    g = torch.Generator().manual_seed(seed)
    r = randn(g, dtype)
    t = {"transformer.wte.weight": r(32, 8), "transformer.wpe.weight": r(16, 8),
         "transformer.ln_f.weight": r(8), "transformer.ln_f.bias": r(8)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        t.update({p + "ln_1.weight": r(8), p + "ln_1.bias": r(8),
                  p + "attn.c_attn.weight": r(8, 24), p + "attn.c_attn.bias": r(24),
                  p + "attn.c_proj.weight": r(8, 8), p + "ln_2.weight": r(8),
                  p + "mlp.c_fc.weight": r(8, 32), p + "mlp.c_proj.weight": r(32, 8)})
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, "model.safetensors"), t)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                   "n_layer": layers, "n_embd": 8, "n_head": 2, "vocab_size": 32}, f)


def make_llava(folder, seed, dtype):
    """LLaVA's two stacks: a 2-layer Llama text model and a 2-layer CLIP
    vision tower (4-D patch embedding), with the projector between."""
    g = torch.Generator().manual_seed(seed)
    r = randn(g, dtype)
    t = {"language_model.model.embed_tokens.weight": r(32, 8),
         "language_model.lm_head.weight": r(32, 8),
         "language_model.model.norm.weight": r(8),
         "vision_tower.vision_model.embeddings.patch_embedding.weight": r(16, 3, 4, 4),
         "vision_tower.vision_model.embeddings.class_embedding": r(16),
         "vision_tower.vision_model.post_layernorm.weight": r(16),
         "multi_modal_projector.linear_1.weight": r(8, 16),
         "multi_modal_projector.linear_1.bias": r(8)}
    for i in range(2):
        p = f"language_model.model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{m}.weight"] = r(8, 8)
        t[p + "mlp.up_proj.weight"] = r(16, 8)
        t[p + "input_layernorm.weight"] = r(8)
        p = f"vision_tower.vision_model.encoder.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[p + f"self_attn.{m}.weight"] = r(16, 16)
        t[p + "mlp.fc1.weight"] = r(32, 16)
        t[p + "layer_norm1.weight"] = r(16)
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, "model.safetensors"), t)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
                   "text_config": {"model_type": "llama", "num_hidden_layers": 2,
                                   "vocab_size": 32},
                   "vision_config": {"model_type": "clip_vision_model",
                                     "num_hidden_layers": 2}}, f)


# ---- mergekit's math, restated (float64) -----------------------------------

LAYER = re.compile(r"(^|\.)(layers|h)\.(\d+)(\.|$)")


def layer_of(name):
    """(stack, N) for a tensor inside a layer, else None."""
    m = LAYER.search(name)
    return (name[:m.start(2)], int(m.group(3))) if m else None


def layer_t(name, stacks):
    """t = N / (L - 1), L counted per stack as mergekit counts per module."""
    ref = layer_of(name)
    if ref is None:
        return 0.0
    layers = stacks[ref[0]]
    return 1.0 if layers <= 1 else ref[1] / (layers - 1)


def is_input_embedding(name):
    return any(k in name for k in ("embed_tokens", "wte", "wpe", "embed_in",
                                   "word_embeddings", "position_embeddings"))


def param(value, name, t, default=None):
    """A number, a gradient (piecewise linear over t) or a filter list
    (first entry whose filter is in the name, or without one)."""
    if value is None:
        return default
    if isinstance(value, list) and value and isinstance(value[0], dict):
        for e in value:
            f = e.get("filter")
            if f is None or f == "*" or f in name:
                return param(e["value"], name, t, default)
        return default
    if isinstance(value, list):
        if len(value) == 1:
            return float(value[0])
        x = t * (len(value) - 1)
        i = min(int(math.floor(x)), len(value) - 2)
        f = x - i
        return float(value[i]) * (1 - f) + float(value[i + 1]) * f
    if isinstance(value, bool):
        return value
    return float(value)


def model_param(cfg, entry, key, name, t, default=None):
    own = (entry.get("parameters") or {}).get(key)
    v = param(own, name, t, None)
    if v is None:
        v = param((cfg.get("parameters") or {}).get(key), name, t, default)
    return v


def slerp(t, v0, v1, eps=1e-8):
    n0 = v0 / v0.norm() if v0.norm() > eps else v0
    n1 = v1 / v1.norm() if v1.norm() > eps else v1
    dot = float((n0 * n1).sum())
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    th0 = math.acos(dot)
    s0 = math.sin(th0 - th0 * t) / math.sin(th0)
    s1 = math.sin(th0 * t) / math.sin(th0)
    return s0 * v0 + s1 * v1


def ties_trim(tau, density):
    if density >= 1:
        return tau
    k = int(density * tau.numel())
    mask = torch.zeros(tau.numel(), dtype=tau.dtype)
    # Equal magnitudes: the lower index first (mergekit's argsort leaves
    # their order unspecified; ours is the spec's `keep: exact`).
    order = torch.sort(tau.abs().reshape(-1), descending=True, stable=True).indices
    mask[order[:k]] = 1
    return tau * mask.reshape(tau.shape)


def ram(taus, eps, plus, r=0.1, alpha=0.2):
    tv = torch.stack([x.reshape(-1) for x in taus])
    nz = tv.abs() > eps
    counts = nz.sum(0, keepdim=True)
    overlap, unique = counts > 1, counts == 1
    tz = tv * nz
    u = tz * unique
    if plus:
        rho = (nz & overlap).sum(1).double() / (nz & unique).sum(1).double().clamp(min=eps)
        u = u * (1 + r * rho.clamp(0, alpha)).unsqueeze(-1)
    return (u + tz * overlap / counts.clamp(min=1)).sum(0).reshape(taus[0].shape)


def reference(cfg, models, stacks):
    """Expected output tensors (float64) of a one-document config, or None
    where the math is not restated here."""
    method = cfg["merge_method"]
    entries = cfg.get("models")
    if entries is None and method != "passthrough":
        # One slice over every layer is the models: form.
        entries = [{"model": s["model"], "parameters": s.get("parameters")}
                   for s in cfg["slices"][0]["sources"]]
    base = cfg.get("base_model")
    out = {}
    if method == "passthrough" and "slices" in cfg:
        offset = 0
        srcs = [s["sources"][0] for s in cfg["slices"]]
        first, last = models[srcs[0]["model"]], models[srcs[-1]["model"]]
        for n, v in first.items():
            if layer_of(n) is None and is_input_embedding(n):
                out[n] = v.double()
        for s in srcs:
            a, b = s["layer_range"]
            for n, v in models[s["model"]].items():
                m = LAYER.search(n)
                if m and a <= int(m.group(3)) < b:
                    renamed = n[:m.start(3)] + str(int(m.group(3)) - a + offset) + n[m.end(3):]
                    out[renamed] = v.double()
            offset += b - a
        for n, v in last.items():
            if layer_of(n) is None and not is_input_embedding(n):
                out[n] = v.double()
        return out
    ref_model = models[base] if base else models[entries[0]["model"]]
    for name in ref_model:
        t = layer_t(name, stacks)
        xs = [models[e["model"]][name].double() for e in entries]
        if method == "passthrough":
            out[name] = xs[0] * model_param(cfg, entries[0], "scale", name, t, 1.0)
        elif method == "linear":
            w = [model_param(cfg, e, "weight", name, t, 1.0) for e in entries]
            out[name] = sum(wi * x for wi, x in zip(w, xs)) / sum(w)
        elif method == "slerp":
            other = [x for e, x in zip(entries, xs) if e["model"] != base][0]
            tt = param((cfg.get("parameters") or {}).get("t"), name, t)
            out[name] = slerp(tt, models[base][name].double(), other)
        elif method in ("task_arithmetic", "ties", "ram", "ramplus_tl", "nearswap"):
            b0 = models[base][name].double()
            rest = [(e, x) for e, x in zip(entries, xs) if e["model"] != base]
            taus = [x - b0 for _, x in rest]
            if method in ("ram", "ramplus_tl"):
                p = cfg.get("parameters") or {}
                out[name] = b0 + ram(taus, p.get("epsilon", 1e-5), method == "ramplus_tl",
                                     p.get("r", 0.1), p.get("alpha", 0.2))
                continue
            if method == "nearswap":
                tt = param(cfg["parameters"]["t"], name, t)
                w = (tt / (b0 - rest[0][1]).abs().clamp(min=1e-6)).clamp(0, 1)
                out[name] = w * rest[0][1] + (1 - w) * b0
                continue
            w = torch.tensor([model_param(cfg, e, "weight", name, t, 1.0) for e, _ in rest],
                             dtype=torch.float64)
            lam = param((cfg.get("parameters") or {}).get("lambda"), name, t, 1.0)
            if method == "ties":
                taus = [ties_trim(x, model_param(cfg, e, "density", name, t, 1.0))
                        for (e, _), x in zip(rest, taus)]
            d = torch.stack(taus)
            wd = d * w.reshape([-1] + [1] * (d.dim() - 1))
            wshape = w.reshape([-1] + [1] * (d.dim() - 1))
            if method == "ties":
                majority = (wd.sum(0) >= 0).double() * 2 - 1
                mask = (wd.sign() == majority).double()
                mixed = (wd * mask).sum(0)
                div = (wshape * mask).sum(0)
                div[div == 0] = 1
                normalize = param((cfg.get("parameters") or {}).get("normalize"), name, t, True)
            else:
                mixed = wd.sum(0)
                div = w.sum()
                normalize = param((cfg.get("parameters") or {}).get("normalize"), name, t, False)
            if normalize:
                mixed = mixed / div
            out[name] = b0 + lam * mixed
        else:
            return None
    return out


# What each config must give: "math" (compared with reference()), "runs"
# (why its math is pinned elsewhere), or an error the output must contain.
EXPECT = {
    "examples/arcee_fusion.yml": ("runs", "golden-mergekit/arcee_fusion"),
    "examples/bio-merge.yml": ("math", None),
    "examples/docs-multimerge.yml": ("runs", "stages: linear, slerp, then a random DARE draw"),
    "examples/gradient-slerp.yml": ("math", None),
    "examples/linear.yml": ("math", None),
    "examples/orcamini-platy-44layer.yml": ("math", None),
    "examples/ties.yml": ("math", None),
    "tests/arcee_fusion.yml": ("runs", "golden-mergekit/arcee_fusion"),
    "tests/breadcrumbs.yml": ("runs", "golden/breadcrumbs_*"),
    "tests/chat_template_chatml.yml": ("math", None),
    "tests/chat_template_literal.yml": ("math", None),
    "tests/dare_ties.yml": ("runs", "a random draw (golden/dare_* pin the seeded math)"),
    "tests/della.yml": ("runs", "a random draw (golden/della_* pin the seeded math)"),
    "tests/della_invalid_epsilon.yml": ("error", "epsilon must be in [0, 1]"),
    "tests/karcher.yml": ("runs", "golden-mergekit/karcher"),
    "tests/linear.yml": ("math", None),
    "tests/model_stock.yml": ("runs", "golden/model_stock"),
    "tests/model_stock_filterwise.yml": ("runs", "golden/model_stock"),
    "tests/multislerp.yml": ("runs", "golden-mergekit/multislerp"),
    "tests/nearswap.yml": ("math", None),
    "tests/gpt2_copy.yml": ("math", None),
    "tests/gpt2_stack.yml": ("math", None),
    "tests/granite_copy.yml": ("math", None),
    "tests/granite_linear.yml": ("math", None),
    "tests/granite_slerp.yml": ("math", None),
    "tests/passthrough_scale.yml": ("math", None),
    "tests/vlm_linear.yml": ("math", None),
    "tests/vlm_slerp.yml": ("math", None),
    "tests/vlm_task_arithmetic.yml": ("math", None),
    "tests/vlm_ties.yml": ("math", None),
    "tests/vlm_breadcrumbs.yml": ("runs", "golden/breadcrumbs_*"),
    "tests/vlm_dare_ties.yml": ("runs", "a random draw (golden/dare_* pin the seeded math)"),
    "tests/vlm_model_stock.yml": ("runs", "golden/model_stock"),
    "tests/vlm_model_stock_filterwise.yml": ("runs", "golden/model_stock"),
    "tests/ram.yml": ("math", None),
    "tests/ramplus_tl.yml": ("math", None),
    "tests/sce.yml": ("runs", "golden-mergekit/sce"),
    "tests/slerp.yml": ("math", None),
    "tests/task_arithmetic.yml": ("math", None),
    "tests/ties.yml": ("math", None),
}
for _base in ("base", "nobase"):
    for _rows in ("rows", "cols"):
        for _flat in ("flat", "noflat"):
            EXPECT[f"tests/nuslerp_{_base}_{_rows}_{_flat}.yml"] = (
                "runs", "golden-mergekit/nuslerp, nuslerp_flat")
            EXPECT[f"tests/vlm_nuslerp_{_base}_{_rows}_{_flat}.yml"] = (
                "runs", "golden-mergekit/nuslerp, nuslerp_flat")
EXPECT["tests/nuslerp_weights_sum_to_zero.yml"] = ("runs", "golden-mergekit/nuslerp")
EXPECT["tests/vlm_nuslerp_weights_sum_to_zero.yml"] = ("runs", "golden-mergekit/nuslerp")

HUB_13B = ["psmathur/orca_mini_v3_13b", "garage-bAInd/Platypus2-13B",
           "WizardLM/WizardLM-13B-V1.2", "WizardLM/WizardMath-13B-V1.0",
           "TheBloke/Llama-2-13B-fp16"]
HUB_7B = ["mistralai/Mistral-7B-Instruct-v0.2", "BioMistral/BioMistral-7B",
          "mistralai/Mistral-7B-v0.1", "NousResearch/Hermes-2-Pro-Mistral-7B",
          "teknium/OpenHermes-2.5-Mistral-7B"]


class MergekitExamples(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mergekit_examples_")
        cls.cache = os.path.join(cls.tmp, "hf-cache")
        cls.models = {}
        # Hub ids: the snapshot layout of a shared HF cache. The "13B"
        # models have 40 layers (the examples' layer ranges), in fp16.
        for seed, repo in enumerate(HUB_13B + HUB_7B):
            layers = 40 if repo in HUB_13B else 4
            snap = os.path.join(cls.cache, "models--" + repo.replace("/", "--"),
                                "snapshots", "0" * 40)
            make_llama(snap, layers, 100 + seed, torch.float16)
            os.makedirs(os.path.join(os.path.dirname(os.path.dirname(snap)), "refs"))
            with open(os.path.join(os.path.dirname(os.path.dirname(snap)), "refs", "main"), "w") as f:
                f.write("0" * 40)
            cls.models[repo] = read_model(snap)
        # mergekit's test fixtures: three 4-layer models and a base with a
        # tokenizer (their picollama, bf16 here as the configs ask).
        for seed, name in enumerate(["model_a", "model_b", "model_c", "model_base",
                                     "granite_a", "granite_b"]):
            folder = os.path.join(cls.tmp, "work", name)
            make_llama(folder, 4, seed, torch.bfloat16, tokenizer=(name == "model_base"))
            if name.startswith("granite"):
                with open(os.path.join(folder, "config.json")) as f:
                    config = json.load(f)
                config.update(model_type="granite", architectures=["GraniteForCausalLM"])
                with open(os.path.join(folder, "config.json"), "w") as f:
                    json.dump(config, f)
            cls.models[name] = read_model(folder)
        folder = os.path.join(cls.tmp, "work", "gpt2_like")
        make_gpt2(folder, 12, 20, torch.float32)
        cls.models["gpt2_like"] = read_model(folder)
        for seed, name in enumerate(["vlm_a", "vlm_b", "vlm_c"]):
            folder = os.path.join(cls.tmp, "work", name)
            make_llava(folder, 30 + seed, torch.float32)
            cls.models[name] = read_model(folder)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_config(self, rel):
        src = os.path.join(CONFIGS, rel)
        cfg_path = os.path.join(self.tmp, "work", os.path.basename(rel))
        shutil.copy(src, cfg_path)
        out = os.path.join(self.tmp, "out", rel.replace("/", "_"))
        env = dict(os.environ, HF_HUB_CACHE=self.cache)
        p = subprocess.run([BIN, "mergekit-yaml", cfg_path, out, "--copy-tokenizer"],
                           capture_output=True, text=True, env=env, timeout=300)
        return p, out

    def test_every_config_is_listed(self):
        found = sorted(os.path.join(d, f) for d in ("examples", "tests")
                       for f in os.listdir(os.path.join(CONFIGS, d)) if f.endswith(".yml"))
        self.assertEqual(found, sorted(EXPECT))

    def check(self, rel):
        kind, why = EXPECT[rel]
        p, out = self.run_config(rel)
        if kind == "error":
            self.assertNotEqual(p.returncode, 0, rel)
            self.assertIn(why, p.stderr, rel)
            self.assertFalse(os.path.exists(out), rel)
            return
        self.assertEqual(p.returncode, 0, f"{rel}: {p.stderr}")
        got = read_model(out)
        for name, v in got.items():
            self.assertTrue(torch.isfinite(v.double()).all(), f"{rel}: {name}")
        self.assertTrue(os.path.exists(os.path.join(out, "README.md")), rel)
        with open(os.path.join(CONFIGS, rel)) as f:
            cfg = list(yaml.safe_load_all(f))
        final = [d for d in cfg if d and "name" not in d][0]
        refs = [final.get("base_model")] + [m["model"] for m in final.get("models") or []] + \
            [s["model"] for sl in final.get("slices") or [] for s in sl["sources"]]
        ref_name = next(r for r in refs if r in self.models)
        stacks = {}
        for n in self.models[ref_name]:
            ref = layer_of(n)
            if ref:
                stacks.setdefault(ref[0], set()).add(ref[1])
        stacks = {k: len(v) for k, v in stacks.items()}
        if kind == "runs":
            # Same tensors and shapes as the reference model.
            ref = self.models[ref_name]
            self.assertEqual(sorted(got), sorted(ref), rel)
            for n in ref:
                self.assertEqual(tuple(got[n].shape), tuple(ref[n].shape), f"{rel}: {n}")
            return
        want = reference(final, self.models, stacks)
        self.assertIsNotNone(want, rel)
        self.assertEqual(sorted(got), sorted(want), rel)
        tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}
        for n, w in want.items():
            g = got[n].double()
            scale = max(float(w.abs().max()), 1e-12)
            err = float((g - w).abs().max())
            self.assertLessEqual(err, tol[got[n].dtype] * scale,
                                 f"{rel}: {n} off by {err:.3g} (scale {scale:.3g})")
        if "slices" in final and final["merge_method"] == "passthrough":
            with open(os.path.join(out, "config.json")) as f:
                config = json.load(f)
            self.assertEqual(config.get("num_hidden_layers", config.get("n_layer")),
                             sum(s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0]
                                 for s in final["slices"]), rel)
        if "chat_template" in final:
            with open(os.path.join(out, "tokenizer_config.json")) as f:
                tc = json.load(f)
            needle = "<|im_start|>" if final["chat_template"] == "chatml" else final["chat_template"]
            self.assertIn(needle, tc.get("chat_template", ""), rel)


def _add_cases():
    for rel in EXPECT:
        name = "test_" + rel.replace("/", "_").replace("-", "_").replace(".yml", "")
        setattr(MergekitExamples, name, lambda self, rel=rel: self.check(rel))


_add_cases()

if __name__ == "__main__":
    unittest.main(verbosity=2)
