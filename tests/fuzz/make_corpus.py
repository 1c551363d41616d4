#!/usr/bin/python3
"""Writes the fuzzers' seed corpus (small, committed with this script):
valid safetensors files of every dtype and layout the reader handles plus
the classic corruptions, and merge configs covering the vocabulary.

    tests/fuzz/make_corpus.py tests/fuzz/corpus
"""
import json
import os
import struct
import sys

DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4,
          "U8": 1, "BOOL": 1, "F8_E4M3": 1}


def safetensors(tensors, metadata=None, pad=0):
    """tensors: [(name, dtype, shape)] laid out back to back."""
    header, offset = {}, 0
    for name, dtype, shape in tensors:
        n = DTYPES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text + bytes(range(256)) * (offset // 256) + bytes(offset % 256)


def main(out):
    st = os.path.join(out, "safetensors")
    cfg = os.path.join(out, "merge_config")
    os.makedirs(st, exist_ok=True)
    os.makedirs(cfg, exist_ok=True)
    seeds = {
        "one_f32": safetensors([("w", "F32", [2, 3])]),
        "all_dtypes": safetensors([(f"t_{d}", d, [3]) for d in DTYPES]),
        "scalar_and_empty": safetensors([("s", "F32", []), ("e", "BF16", [0, 4])]),
        "metadata": safetensors([("w", "F16", [4])], {"format": "pt"}),
        "padded": safetensors([("a", "BF16", [2, 2]), ("b", "I64", [1])], pad=5),
        "empty_header": struct.pack("<Q", 2) + b"{}",
    }
    good = safetensors([("w", "F32", [2, 2])])
    seeds["truncated"] = good[:-3]
    seeds["huge_length"] = struct.pack("<Q", 1 << 40) + good[8:]
    seeds["overlap"] = struct.pack("<Q", 60) + json.dumps(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()[:60] + bytes(12)
    seeds["bad_json"] = struct.pack("<Q", 5) + b"{\"a\":"
    for name, data in seeds.items():
        with open(os.path.join(st, name), "wb") as f:
            f.write(data)

    configs = {
        "ties": "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n"
                "    parameters: {density: 0.2, weight: 1.0}\n  - model: b\n"
                "parameters: {normalize: true, lambda: 1.0}\ndtype: bfloat16\n",
        "gradient_filter": "merge_method: ties\nbase_model: base\nmodels:\n"
                           "  - model: a\n    parameters:\n      density: [0.1, 0.5, 0.9]\n"
                           "      weight:\n        - filter: mlp\n          value: 0.5\n"
                           "        - value: 1\n",
        "slerp": "merge_method: slerp\nbase_model: a\nmodels: [a, b]\nparameters: {t: 0.3}\n",
        "fisher": "merge_method: fisher\nmodels:\n  - model: a\n    parameters: {fisher: fa}\n"
                  "  - model: b\n    parameters: {fisher: fb}\nparameters: {fisher_floor: 1e-6}\n",
        "anchors": "merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
                   "  - model: a\n    parameters: {weight: &w [1, 2, 3]}\n"
                   "  - model: b\n    parameters: {weight: *w}\n",
        "regex": "merge_method: linear\nmodels: [a, b]\nparameters: "
                 "{merge_tensors: '^model\\.layers\\.', semantics: paper}\n"
                 "out_dtype: float16\n",
        "json": json.dumps({"merge_method": "dare_ties", "base_model": "b",
                            "models": [{"model": "x", "parameters": {"density": 0.5}}],
                            "parameters": {"seed": 3, "rescale_mode": "l1"}}),
    }
    configs["slices"] = ("merge_method: passthrough\nslices:\n  - sources:\n"
                         "      - model: a\n        layer_range: [0, 2]\n"
                         "        parameters: {scale: [{filter: \"*\", value: 0.5}]}\n"
                         "  - sources: [{model: b, layer_range: [1, 3]}]\n")
    configs["stages"] = ("name: s\nmerge_method: linear\nmodels: [a, b]\n---\n"
                         "merge_method: nuslerp\nmodels:\n  - model: s+lora\n"
                         "    parameters: {weight: 1}\n  - model: org/name@v1\n"
                         "    parameters: {weight: 2}\n...\n")
    configs["modules"] = ("merge_method: ties\nbase_model: base\nmodules:\n"
                          "  text_decoder:\n    parameters: {density: 0.5}\n"
                          "    models: [a, {model: b, parameters: {weight: 2}}]\n"
                          "  vision_tower:\n    slices:\n      - sources:\n"
                          "          - {model: a, layer_range: [0, 4]}\n"
                          "          - {model: b, layer_range: [0, 4]}\n")
    for name, text in configs.items():
        with open(os.path.join(cfg, name + ".yaml"), "w") as f:
            f.write(text)
    # Inputs that once hung the parser (yaml-cpp's LoadAll looped forever).
    with open(os.path.join(cfg, "regress_loadall_loop"), "wb") as f:
        f.write(b",\xff\xff\xff\xf8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus"))
