"""Write the seed corpora (tests/fuzz/corpus/<harness>/) and dictionaries (tests/fuzz/dict/)
from real files: safetensors written by the safetensors library, config.json written by
transformers, shards written by h5py, the example job files. Re-run to regenerate:
    /root/.cache/projcompd/venv/bin/python tests/fuzz/make_corpus.py"""
import glob
import json
import os
import shutil
import struct
import sys
import tempfile

import h5py
import numpy as np
from safetensors.numpy import save

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))


def out(harness, name, data):
    d = os.path.join(HERE, "corpus", harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def st_bytes(tensors, metadata=None):
    return save(tensors, metadata=metadata)


def main():
    shutil.rmtree(os.path.join(HERE, "corpus"), ignore_errors=True)
    rng = np.random.default_rng(0)
    # safetensors: every dtype, 1-D/2-D/0-D/empty, metadata
    import torch
    from safetensors.torch import save as tsave
    out("safetensors", "f32_2d", st_bytes({"w": rng.standard_normal((3, 4)).astype(np.float32)}, {"format": "pt"}))
    out("safetensors", "mixed", tsave({"a": torch.ones(2, 3, dtype=torch.bfloat16), "b": torch.zeros(4, dtype=torch.float16),
                                       "c": torch.arange(3, dtype=torch.int64), "d": torch.tensor(1.5),
                                       "e": torch.zeros(0, 5), "f": torch.arange(4, dtype=torch.int32).reshape(2, 2),
                                       "g": torch.zeros(3, dtype=torch.uint8)}))
    out("safetensors", "hand_header", struct.pack("<Q", 64) +
        b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}        ' + b"\0" * 8)
    # st_index: index + shards a.safetensors, b.safetensors
    sep = b"\n--shard--\n"
    a = st_bytes({"model.embed_tokens.weight": rng.standard_normal((4, 2)).astype(np.float32)})
    b = tsave({"model.norm.weight": torch.ones(2, dtype=torch.bfloat16), "lm_head.weight": torch.ones(4, 2)})
    idx = {"metadata": {"total_size": 56}, "weight_map": {"model.embed_tokens.weight": "a.safetensors",
                                                          "model.norm.weight": "b.safetensors",
                                                          "lm_head.weight": "b.safetensors"}}
    out("st_index", "two_shards", json.dumps(idx, indent=2).encode() + sep + a + sep + b)
    out("st_index", "one_shard", json.dumps({"weight_map": {"model.embed_tokens.weight": "a.safetensors"}}).encode()
        + sep + a)
    # hf_config: what transformers writes
    from transformers import LlamaConfig
    tmp = tempfile.mkdtemp()
    cfgs = {
        "tiny": LlamaConfig(vocab_size=120, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
        "llama3": LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, rope_theta=500000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                              eos_token_id=[2, 3], bos_token_id=1),
    }
    for name, c in cfgs.items():
        c.save_pretrained(os.path.join(tmp, name))
        out("hf_config", name, open(os.path.join(tmp, name, "config.json")).read())
        out("json", "hf_" + name, open(os.path.join(tmp, name, "config.json")).read())
    d = json.loads(open(os.path.join(tmp, "tiny", "config.json")).read())
    d["projcomp_intermediate_sizes"] = [128, 96]
    d["head_dim"] = None
    out("hf_config", "uneven", json.dumps(d))
    if os.path.exists(os.path.join(SRC, "configs", "demo-model.json")):
        out("hf_config", "demo", open(os.path.join(SRC, "configs", "demo-model.json")).read())
    shutil.rmtree(tmp)
    # json
    out("json", "index", json.dumps(idx))
    out("json", "escapes", '{"s": "a\\u00e9\\ud83d\\ude00\\n\\t\\"", "n": [-0.0, 1e308, 5, -12, 3.25e-7],'
        ' "b": [true, false, null], "o": {}}')
    # config: example job files, some with --set lines after "\n@@\n"
    jobs = sorted(glob.glob(os.path.join(SRC, "configs", "*.yaml")))
    for p in jobs:
        out("config", os.path.basename(p), open(p).read())
    job = open(jobs[0]).read() if jobs else "run:\n  mode: eval\n"
    out("config", "with_sets", job.rstrip("\n") + "\n@@\ntrain.steps=3\ncompress.d_ff=[8, 16]\ndistill.alpha=0.5"
        "\nrun.dir=/tmp/x: y\ntrain.lr=1e-4")
    for name in ["duplicate_key", "set_list_entry", "model_d_ff_length", "two_documents", "type_bool"]:
        p = os.path.join(SRC, "tests", "config", "bad", name + ".yaml")
        if os.path.exists(p):
            out("config", "bad_" + name, open(p).read())
    # data_raw: shards made by h5py (uint16 attrs on the dataset; uint32 attrs on the root)
    tmp = tempfile.mkdtemp()
    for name, dt, on_root in [("u16", "uint16", False), ("u32_root", "uint32", True)]:
        p = os.path.join(tmp, name + ".h5")
        with h5py.File(p, "w") as f:
            ds = f.create_dataset("tokens", data=rng.integers(0, 100, 64).astype(dt))
            tgt = f if on_root else ds
            tgt.attrs["vocab_size"] = 100
            tgt.attrs["eos_id"] = 0
            tgt.attrs["tokenizer"] = "byte"
        out("data_raw", name, open(p, "rb").read())
    shutil.rmtree(tmp)
    # data_gen: parameter bytes (see fuzz_data_gen.c); mostly valid files
    for i in range(6):
        out("data_gen", f"seed{i}", bytes(rng.integers(0, 256, 64 + 40 * i, dtype=np.uint8)))
    out("data_gen", "valid_small", bytes([1, 20, 4, 0, 0, 0, 3, 40, 0, 0, 1, 0, 200, 0, 0, 0, 1, 0, 0, 0, 0, 0,
                                          1, 1, 5, 0, 0, 0]) + bytes(range(80)))
    # ckpt: MANIFEST with placeholders, a block file and a raw file (see fuzz_ckpt.c)
    def block(name, arrays):
        b = b"PCCKBLK1" + struct.pack("<II", len(name), len(arrays)) + name.encode()
        for an, a in arrays:
            b += struct.pack("<I", len(an)) + an.encode() + struct.pack("<q", len(a))
        for _, a in arrays:
            b += np.asarray(a, dtype=np.float32).tobytes()
        return b
    fsep = b"\n--file--\n"
    blk = block("model.norm.weight", [("w", [1.0, 2.0, 3.0]), ("m", [0.0] * 3), ("v", [0.5] * 3)])
    man = ("projcompd-checkpoint 1\nstep 12\nranks 2\nmeta mode compress\nmeta seed 9\n"
           "file block model.norm.weight model.norm.weight.blk @size @hash\n"
           "file raw importance.txt importance.txt.raw @size @hash\nend 2 @hash\n")
    out("ckpt", "two_files", man.encode() + fsep + b"model.norm.weight.blk\n" + blk + fsep
        + b"importance.txt.raw\nd_model 1 2 3\n")
    out("ckpt", "empty", b"projcompd-checkpoint 1\nstep 12\nend 0 @hash\n")
    print("corpus written to", os.path.join(HERE, "corpus"))


if __name__ == "__main__":
    sys.exit(main())
