"""Reference tests of projcompd's safetensors and config.json handling against the
Python safetensors and transformers libraries, driven through the st_tool executable.

Usage: test_st_py.py CASE ST_TOOL
  read-python         files written by safetensors.torch.save_file are read exactly
  write-transformers  models re-written by st_tool load in transformers bit-exactly
  config              hf_config load/save round trips against LlamaConfig
  malformed           broken files are rejected with messages naming file and tensor
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

TOOL = None
FAILS = []


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("FAIL:", msg)


def tool(*args, ok=True):
    r = subprocess.run([TOOL] + [str(a) for a in args], capture_output=True, text=True)
    if ok and r.returncode != 0:
        raise RuntimeError("st_tool %s failed (%d): %s" % (" ".join(map(str, args)), r.returncode, r.stderr))
    return r


def fnv64(b):
    h = 1469598103934665603
    for c in b:
        h ^= c
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def parse_dump(text, values):
    """name -> (dtype, shape tuple, hash, np.float32 values or None)."""
    out = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        name, dtype, shape, h = lines[i].split(" ")
        shp = () if shape == "-" else tuple(int(x) for x in shape.split(","))
        i += 1
        vals = None
        if values and dtype in ("F32", "F16", "BF16"):
            vals = np.array([float(x) for x in lines[i].split()], dtype=np.float32) if lines[i] else \
                np.zeros(0, np.float32)
            i += 1
        out[name] = (dtype, shp, int(h, 16), vals)
    return out


ST_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
            torch.int64: "I64", torch.uint8: "U8"}


def same_f32(a, b):
    a = np.asarray(a, np.float32).ravel()
    b = np.asarray(b, np.float32).ravel()
    if a.shape != b.shape:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb) and np.array_equal(a[~na].view(np.uint32), b[~nb].view(np.uint32)))


def compare_dump(path, tensors, tag):
    d = parse_dump(tool("dump", path, "--values").stdout, True)
    check(set(d) == set(tensors), "%s: tensor names %s != %s" % (tag, sorted(d), sorted(tensors)))
    for name, t in tensors.items():
        if name not in d:
            continue
        dtype, shp, h, vals = d[name]
        check(dtype == ST_DTYPE[t.dtype], "%s: %s dtype %s" % (tag, name, dtype))
        check(shp == tuple(t.shape), "%s: %s shape %s vs %s" % (tag, name, shp, tuple(t.shape)))
        if t.dtype in (torch.float32, torch.float16, torch.bfloat16):
            ref = t.float().numpy()
            check(same_f32(vals, ref), "%s: %s values differ" % (tag, name))
            if not np.isnan(ref).any():
                check(h == fnv64(np.ascontiguousarray(ref).tobytes()), "%s: %s checksum differs" % (tag, name))
        else:
            check(h == fnv64(t.contiguous().numpy().tobytes()), "%s: %s integer checksum differs" % (tag, name))


def case_read_python(tmp):
    g = torch.Generator().manual_seed(7)
    base = torch.randn(37, 23, generator=g) * 3
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 1e-30, 65504.0, 70000.0,
                            6e-8, 1e-40, 3.4e38])
    tensors = {
        "w.f32": base.clone(),
        "w.f16": base.half(),
        "w.bf16": base.bfloat16(),
        "cube.bf16": torch.randn(3, 4, 5, generator=g).bfloat16(),
        "special.f32": torch.cat([special, torch.tensor([float("nan")])]),
        "special.f16": special.half(),
        "special.bf16": torch.cat([special, torch.tensor([float("nan")])]).bfloat16(),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "ids.i64": torch.arange(-5, 5, dtype=torch.int64),
        "ids.i32": torch.arange(7, dtype=torch.int32) * 1000,
        "mask.u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
    }
    path = os.path.join(tmp, "py.safetensors")
    save_file(tensors, path, metadata={"format": "pt", "note": "é"})
    compare_dump(path, tensors, "read-python")

    # row/column slices of each float dtype against numpy slicing
    for name in ("w.f32", "w.f16", "w.bf16"):
        ref = tensors[name].float().numpy()
        for kind, s, n in (("rows", 0, 37), ("rows", 5, 11), ("rows", 36, 1), ("cols", 0, 23), ("cols", 7, 9),
                           ("cols", 22, 1)):
            out = tool("slice", path, name, kind, s, n).stdout.split()
            got = np.array([float(x) for x in out], np.float32)
            want = ref[s:s + n, :] if kind == "rows" else ref[:, s:s + n]
            check(same_f32(got, want), "slice %s %s %d %d" % (name, kind, s, n))
        r = tool("slice", path, name, "rows", 30, 8, ok=False)
        check(r.returncode != 0 and name in r.stderr, "out-of-range row slice of %s: %s" % (name, r.stderr))
        r = tool("slice", path, name, "cols", 20, 4, ok=False)
        check(r.returncode != 0 and name in r.stderr, "out-of-range col slice of %s: %s" % (name, r.stderr))

    # our writer: every float tensor converted to each dtype, read back by safetensors
    floats = {k: v for k, v in tensors.items() if v.dtype in (torch.float32, torch.float16, torch.bfloat16)}
    for dt, tdt in (("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)):
        out = os.path.join(tmp, "rt-%s.safetensors" % dt)
        tool("roundtrip", path, out, dt)
        got = load_file(out)
        with safe_open(out, framework="pt") as f:
            check(f.metadata() == {"format": "pt"}, "roundtrip %s metadata %s" % (dt, f.metadata()))
        with open(out, "rb") as fh:
            hlen = struct.unpack("<Q", fh.read(8))[0]
        check((8 + hlen) % 8 == 0, "roundtrip %s: data section not 8-byte aligned" % dt)
        check(set(got) == set(floats), "roundtrip %s names" % dt)
        for k, v in floats.items():
            want = v.float().to(tdt)
            check(got[k].dtype == tdt and tuple(got[k].shape) == tuple(v.shape), "roundtrip %s %s dtype/shape" % (dt, k))
            check(same_f32(got[k].float().numpy(), want.float().numpy()), "roundtrip %s %s values" % (dt, k))

    # a sharded directory written by Python (index + two shards, one extra tensor)
    sd = os.path.join(tmp, "sharded")
    os.makedirs(sd)
    a = {"a": base.clone(), "b": base.half()}
    b = {"c": base.bfloat16(), "unindexed": torch.ones(2)}
    save_file(a, os.path.join(sd, "part-a.safetensors"), metadata={"format": "pt"})
    save_file(b, os.path.join(sd, "part-b.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(sd, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": 0}, "weight_map": {"a": "part-a.safetensors",
                   "b": "part-a.safetensors", "c": "part-b.safetensors"}}, fh)
    compare_dump(sd, {"a": a["a"], "b": a["b"], "c": b["c"]}, "read-python sharded")


def tiny_llama(dtype, tie=False, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tie, bos_token_id=1,
                      eos_token_id=2)
    torch.manual_seed(seed)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():  # make norm gains non-trivial so they are really compared
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return m.to(dtype).eval()


def case_write_transformers(tmp):
    from transformers import LlamaForCausalLM
    ids = torch.tensor([[1, 5, 9, 33, 100, 7, 2, 64]])
    for dtype, dname in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        for tie in (False, True):
            tag = "%s-tie%d" % (dname, int(tie))
            model = tiny_llama(dtype, tie)
            src = os.path.join(tmp, "src-" + tag)
            model.save_pretrained(src, safe_serialization=True, max_shard_size="100KB")
            check(os.path.exists(os.path.join(src, "model.safetensors.index.json")), "%s: transformers did not shard" % tag)
            # our reader on transformers' shards
            sd = {}
            for f in sorted(os.listdir(src)):
                if f.endswith(".safetensors"):
                    sd.update(load_file(os.path.join(src, f)))
            compare_dump(src, sd, "read-transformers " + tag)
            with torch.no_grad():
                ref_logits = model(ids).logits.float()
            for shard in (0, 60000):
                dst = os.path.join(tmp, "dst-%s-%d" % (tag, shard))
                tool("write-model", src, dst, dname, shard)
                tool("config-roundtrip", src, dst)
                files = sorted(os.listdir(dst))
                if shard:
                    check("model.safetensors.index.json" in files and len([f for f in files if "-of-" in f]) > 1,
                          "%s: expected shards, got %s" % (tag, files))
                    idx = json.load(open(os.path.join(dst, "model.safetensors.index.json")))
                    total = sum(t.numel() * t.element_size() for t in sd.values())
                    check(idx["metadata"]["total_size"] == total, "%s: total_size %s != %d" %
                          (tag, idx["metadata"]["total_size"], total))
                else:
                    check(files == ["config.json", "model.safetensors"], "%s: files %s" % (tag, files))
                check(not any(".tmp" in f for f in files), "%s: temp files left: %s" % (tag, files))
                loaded = LlamaForCausalLM.from_pretrained(dst, torch_dtype=dtype).eval()
                ps, pl = dict(model.state_dict()), dict(loaded.state_dict())
                check(set(ps) == set(pl), "%s/%d: parameter names differ" % (tag, shard))
                for k in ps:
                    check(ps[k].dtype == pl[k].dtype and torch.equal(ps[k], pl[k]),
                          "%s/%d: parameter %s differs" % (tag, shard, k))
                check(loaded.config.tie_word_embeddings == tie, "%s: tie flag" % tag)
                with torch.no_grad():
                    logits = loaded(ids).logits.float()
                check(torch.equal(logits, ref_logits), "%s/%d: logits differ" % (tag, shard))
    # f32 source written as bf16 equals torch's own rounding
    model = tiny_llama(torch.float32)
    src = os.path.join(tmp, "src-cast")
    model.save_pretrained(src, safe_serialization=True)
    dst = os.path.join(tmp, "dst-cast")
    tool("write-model", src, dst, "bf16", 0)
    tool("config-roundtrip", src, dst)
    got = load_file(os.path.join(dst, "model.safetensors"))
    for k, v in model.state_dict().items():
        if k in got:
            check(torch.equal(got[k], v.to(torch.bfloat16)), "cast bf16: %s differs from torch rounding" % k)


def dump_config(d):
    out = {}
    for line in tool("config-dump", d).stdout.splitlines():
        k, v = line.split("=", 1)
        out[k] = v
    return out


def case_config(tmp):
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM
    variants = {
        "plain": dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=6),
        "gqa-llama3-tied": dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True,
                                rope_theta=500000.0, rms_norm_eps=1e-6, max_position_embeddings=1024,
                                rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
                                bos_token_id=0, eos_token_id=[3, 4], torch_dtype="bfloat16"),
        "head-dim": dict(vocab_size=64, hidden_size=64, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=32, torch_dtype="float16"),
    }
    for name, kw in variants.items():
        src = os.path.join(tmp, "cfg-" + name)
        cfg = LlamaConfig(**kw)
        cfg.save_pretrained(src)
        d = dump_config(src)
        eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
        want = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
                "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
                "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_position_embeddings,
                "tie_word_embeddings": int(cfg.tie_word_embeddings), "bos_token_id": cfg.bos_token_id,
                "eos_token_id": eos}
        for k, v in want.items():
            check(int(d[k]) == v, "config %s: %s = %s, transformers says %s" % (name, k, d[k], v))
        check(float(d["rms_norm_eps"]) == cfg.rms_norm_eps, "config %s: rms_norm_eps" % name)
        check(float(d["rope_theta"]) == cfg.rope_theta, "config %s: rope_theta" % name)
        check(d["torch_dtype"] == str(kw.get("torch_dtype", "float32")), "config %s: torch_dtype %s" % (name, d["torch_dtype"]))
        rs = cfg.rope_scaling
        if rs:
            check(d["rope_type"] == "llama3", "config %s: rope_type" % name)
            for k in ("factor", "low_freq_factor", "high_freq_factor"):
                check(float(d["rope_" + k]) == rs[k], "config %s: rope %s" % (name, k))
            check(int(d["rope_original_max_position_embeddings"]) == rs["original_max_position_embeddings"],
                  "config %s: rope original max" % name)
        else:
            check(d["rope_type"] == "", "config %s: rope_type should be empty" % name)
        n_ref = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
        check(int(d["n_params"]) == n_ref, "config %s: n_params %s vs torch %d" % (name, d["n_params"], n_ref))

        dst = os.path.join(tmp, "cfg-out-" + name)
        tool("config-roundtrip", src, dst)
        back = AutoConfig.from_pretrained(dst)
        check(type(back).__name__ == "LlamaConfig" and back.architectures == ["LlamaForCausalLM"],
              "config %s: written config is %s" % (name, type(back).__name__))
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling",
                  "tie_word_embeddings", "max_position_embeddings", "bos_token_id", "eos_token_id",
                  "attention_bias", "mlp_bias", "hidden_act"):
            check(getattr(back, k) == getattr(cfg, k), "config %s: %s written as %r, was %r" %
                  (name, k, getattr(back, k), getattr(cfg, k)))
        check(back.torch_dtype == (cfg.torch_dtype or torch.float32),
              "config %s: torch_dtype written as %r, was %r" % (name, back.torch_dtype, cfg.torch_dtype))
        check(json.load(open(os.path.join(dst, "config.json")))["head_dim"] == cfg.head_dim,
              "config %s: head_dim not explicit" % name)
        check(dump_config(dst) == d, "config %s: C round trip changed fields" % name)
        n_back = sum(p.numel() for p in LlamaForCausalLM(back).parameters())
        check(n_back == n_ref, "config %s: reloaded model has %d params" % (name, n_back))

    # per-layer widths: intermediate_size is the max, the list reads back exactly
    src = os.path.join(tmp, "cfg-gqa-llama3-tied")
    dst = os.path.join(tmp, "cfg-uneven")
    tool("config-roundtrip", src, dst, "40,96,72")
    raw = json.load(open(os.path.join(dst, "config.json")))
    check(raw["intermediate_size"] == 96 and raw["projcomp_intermediate_sizes"] == [40, 96, 72],
          "uneven widths written as %s / %s" % (raw.get("intermediate_size"), raw.get("projcomp_intermediate_sizes")))
    d = dump_config(dst)
    check(d["d_ff_layer"] == "40,96,72" and d["intermediate_size"] == "96", "uneven widths read back as %s" % d["d_ff_layer"])
    back = AutoConfig.from_pretrained(dst)
    check(back.intermediate_size == 96, "uneven: transformers intermediate_size %s" % back.intermediate_size)

    # rejected configs name the file and the key
    bad = {
        "arch": ({"architectures": ["GPT2LMHeadModel"]}, "'architectures'"),
        # transformers builds the class model_type names (Qwen2's biases, Mistral's window)
        "qwen2": ({"model_type": "qwen2"}, "'model_type' is 'qwen2'"),
        "mistral-no-arch": ({"model_type": "mistral", "architectures": None}, "'model_type' is 'mistral'"),
        "hidden": ({"hidden_size": -3}, "'hidden_size'"),
        "rope": ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "'dynamic'"),
        "kv": ({"num_key_value_heads": 5}, "'num_key_value_heads'"),
        "ff": ({"intermediate_size": "big"}, "'intermediate_size'"),
    }
    good = json.load(open(os.path.join(tmp, "cfg-plain", "config.json")))
    for name, (patch, sub) in bad.items():
        d = os.path.join(tmp, "bad-cfg-" + name)
        os.makedirs(d)
        c = dict(good)
        c.update(patch)
        json.dump(c, open(os.path.join(d, "config.json"), "w"))
        r = tool("config-dump", d, ok=False)
        check(r.returncode != 0 and "config.json" in r.stderr and sub in r.stderr,
              "bad config %s: rc=%d stderr=%s" % (name, r.returncode, r.stderr.strip()))


def raw_file(path, header, data, hlen=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(h) if hlen is None else hlen))
        fh.write(h)
        fh.write(data)


def case_malformed(tmp):
    good = os.path.join(tmp, "good.safetensors")
    save_file({"alpha": torch.arange(12, dtype=torch.float32).reshape(3, 4),
               "beta": torch.ones(5, dtype=torch.bfloat16)}, good)
    blob = open(good, "rb").read()
    hlen = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + hlen])
    data = blob[8 + hlen:]
    cases = {}

    def add(name, contents_fn, subs, python_rejects=True):
        p = os.path.join(tmp, name + ".safetensors")
        contents_fn(p)
        cases[name] = (p, subs, python_rejects)

    def patched(**kw):
        def fn(p):
            h = json.loads(json.dumps(header))
            for k, v in kw.items():
                h[k] = v
            raw_file(p, h, data)
        return fn

    add("truncated", lambda p: open(p, "wb").write(blob[:len(blob) - 10]), ["truncated.safetensors"])
    add("tiny", lambda p: open(p, "wb").write(blob[:5]), ["tiny.safetensors", "too short"])
    add("hlen-lies", lambda p: open(p, "wb").write(struct.pack("<Q", len(blob)) + blob[8:]),
        ["hlen-lies.safetensors", "header length"])
    add("bad-json", lambda p: raw_file(p, json.dumps(header).encode()[:-1] + b",}", data),
        ["bad-json.safetensors", "JSON"])
    a = header["alpha"]
    add("outside", patched(alpha=dict(a, data_offsets=[a["data_offsets"][0], len(data) + 4])),
        ["outside.safetensors", "'alpha'", "outside"])
    b = header["beta"]
    add("overlap", patched(beta=dict(b, data_offsets=[a["data_offsets"][1] - 4, a["data_offsets"][1] + 6])),
        ["overlap.safetensors", "overlap"])
    add("wrong-length", patched(alpha=dict(a, shape=[3, 5])), ["wrong-length.safetensors", "'alpha'", "byte length"])
    add("unknown-dtype", patched(beta=dict(b, dtype="F8_E4M3")), ["'beta'", "F8_E4M3"], python_rejects=False)
    add("bad-shape", patched(alpha=dict(a, shape="3x4")), ["'alpha'", "shape"])
    add("meta-not-str", patched(__metadata__={"format": 3}), ["__metadata__"])
    add("dup-key", lambda p: raw_file(p, json.dumps(header).encode()[:-1] + b', "alpha": ' +
                                     json.dumps(a).encode() + b"}", data), ["duplicate key 'alpha'"],
        python_rejects=False)
    # any dtype of the format opens (a file may hold tensors nothing reads); only F32, F16
    # and BF16 are read as values
    f64 = os.path.join(tmp, "f64.safetensors")
    save_file({"gamma": torch.ones(3, 2, dtype=torch.float64), "w": torch.ones(2)}, f64)
    r = tool("dump", f64, ok=False)
    check(r.returncode == 0 and "gamma F64 3,2 " in r.stdout, "an F64 tensor opens: %s" % (r.stdout + r.stderr))
    r = tool("slice", f64, "gamma", "rows", "0", "1", ok=False)
    check(r.returncode != 0 and all(s in r.stderr for s in ["f64.safetensors", "'gamma'", "has dtype F64"]),
          "an F64 tensor is not read as f32: %s" % r.stderr.strip())

    for name, (p, subs, python_rejects) in cases.items():
        r = tool("dump", p, ok=False)
        check(r.returncode != 0, "malformed %s: st_tool accepted it" % name)
        for s in subs:
            check(s in r.stderr, "malformed %s: message %r lacks %r" % (name, r.stderr.strip(), s))
        if python_rejects:
            try:
                load_file(p)
                check(False, "malformed %s: Python safetensors accepts it (test file not malformed?)" % name)
            except Exception:
                pass

    # sharded directories with a broken index
    def sharded(name, wm):
        d = os.path.join(tmp, name)
        os.makedirs(d)
        save_file({"alpha": torch.zeros(2)}, os.path.join(d, "s1.safetensors"))
        json.dump({"metadata": {}, "weight_map": wm}, open(os.path.join(d, "model.safetensors.index.json"), "w"))
        return d
    d = sharded("missing-shard", {"alpha": "s1.safetensors", "beta": "s2.safetensors"})
    r = tool("dump", d, ok=False)
    check(r.returncode != 0 and "s2.safetensors" in r.stderr and "'beta'" in r.stderr,
          "missing shard: %s" % r.stderr.strip())
    d = sharded("absent-tensor", {"alpha": "s1.safetensors", "delta": "s1.safetensors"})
    r = tool("dump", d, ok=False)
    check(r.returncode != 0 and "'delta'" in r.stderr and "does not contain" in r.stderr,
          "absent tensor: %s" % r.stderr.strip())
    # a model directory with nothing in it
    d = os.path.join(tmp, "nothing")
    os.makedirs(d)
    r = tool("dump", d, ok=False)
    check(r.returncode != 0 and "nothing" in r.stderr, "empty dir: %s" % r.stderr.strip())
    # the untouched file is fine
    check(tool("dump", good, ok=False).returncode == 0, "good file rejected")


def main():
    global TOOL
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    case, TOOL = sys.argv[1], os.path.abspath(sys.argv[2])
    fn = {"read-python": case_read_python, "write-transformers": case_write_transformers,
          "config": case_config, "malformed": case_malformed}[case]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="pc-st-py-") as tmp:
        fn(tmp)
    if FAILS:
        print("%d check(s) failed" % len(FAILS))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
