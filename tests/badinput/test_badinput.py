"""Bad inputs run end to end through the real projcompd (under mpirun) and projcomp-data.

Each case builds a small valid set-up (a tiny Llama base written with numpy/safetensors,
HDF5 token shards, a compress job of 2 steps), breaks one thing, runs the program and
asserts what the user sees:
- a non-zero exit status,
- every expected substring in the program's output (stdout + stderr), i.e. a message
  naming the file, key or tensor at fault,
- no partial output: no RUN/final (nor output.dir), no temporary or half-written files
  (*.tmp*) under the run directory, no checkpoint; for config and command-line errors,
  no run directory at all (they are rejected before any work).
Usage: test_badinput.py CASE   (or 'list', or 'all')."""
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

V, D, F, L, H, KV, HD, SEQ = 64, 32, 64, 2, 4, 2, 8, 8


# ------------------------------------------------------------------ fixture

def base_config():
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": D,
            "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": H,
            "num_key_value_heads": KV, "head_dim": HD, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 0,
            "torch_dtype": "float32", "hidden_act": "silu"}


def base_tensors(seed=0):
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)  # noqa: E731
    t = {"model.embed_tokens.weight": w(V, D), "model.norm.weight": np.ones(D, np.float32),
         "lm_head.weight": w(V, D)}
    for i in range(L):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": w(H * HD, D), p + "self_attn.k_proj.weight": w(KV * HD, D),
                  p + "self_attn.v_proj.weight": w(KV * HD, D), p + "self_attn.o_proj.weight": w(D, H * HD),
                  p + "mlp.gate_proj.weight": w(F, D), p + "mlp.up_proj.weight": w(F, D),
                  p + "mlp.down_proj.weight": w(D, F), p + "input_layernorm.weight": np.ones(D, np.float32),
                  p + "post_attention_layernorm.weight": np.ones(D, np.float32)})
    return t


def write_base(d, cfg=None, tensors=None, raw=None):
    """An HF model directory: config.json and model.safetensors (raw bytes if given)."""
    from safetensors.numpy import save_file
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg or base_config(), f, indent=1)
    p = os.path.join(d, "model.safetensors")
    if raw is not None:
        open(p, "wb").write(raw)
    else:
        save_file(tensors if tensors is not None else base_tensors(), p, metadata={"format": "pt"})
    return d


def st_raw(tensors):
    from safetensors.numpy import save
    return save(tensors, metadata={"format": "pt"})


class Fixture:
    def __init__(self, name):
        self.root = pclib.tmpdir("pc-bad-" + name + "-")
        self.base = write_base(os.path.join(self.root, "base"))
        toks = pclib.markov_tokens(3000, V, seed=1)
        self.train = os.path.join(self.root, "train.h5")
        self.valid = os.path.join(self.root, "valid.h5")
        pclib.write_shard(self.train, toks[:2500], V)
        pclib.write_shard(self.valid, toks[2500:], V)
        self.run_dir = os.path.join(self.root, "run")
        self.job = os.path.join(self.root, "job.yaml")
        self.sections = {
            "run": {"dir": self.run_dir, "mode": "compress", "seed": 3},
            "model": {"base": self.base},
            "compress": {"d_model": 16, "d_ff": 32, "importance": "magnitude", "calibration_sequences": 4},
            "data": {"train": [self.train], "valid": [self.valid], "seq_len": SEQ},
            "train": {"steps": 2, "global_batch": 4, "micro_batch": 2, "lr": 1e-3, "warmup_steps": 1},
            "eval": {"batches": 2},
            "checkpoint": {"every_steps": 1},
            "backend": {"device": "cpu", "threads": 1},
        }

    def write_job(self):
        pclib.write_yaml(self.job, self.sections)
        return self.job

    def line_of(self, needle):
        """1-based line of the job file holding needle."""
        for i, line in enumerate(open(self.job), 1):
            if needle in line:
                return i
        raise SystemExit(f"fixture: '{needle}' not in {self.job}")


# ------------------------------------------------------------------ running

def run_daemon(fx, np_=1, extra=(), job=True):
    args = ["mpirun", "--oversubscribe", "-np", str(np_), pclib.PROJCOMPD]
    if job:
        args += ["--cfg", fx.write_job() if not os.path.exists(fx.job) else fx.job]
    args += list(extra)
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=pclib.env(),
                       timeout=300)
    return p.returncode, p.stdout + p.stderr


def run_data(args):
    p = subprocess.run([pclib.PROJCOMP_DATA] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=pclib.env(), timeout=120)
    return p.returncode, p.stdout + p.stderr


def partial_files(d):
    bad = []
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            if ".tmp" in n:
                bad.append(os.path.join(dirpath, n))
    return bad


def expect_failure(rc, out, needles, fx=None, before_work=False, outputs=()):
    """The shared assertions of every case (see the module docstring)."""
    problems = []
    if rc == 0:
        problems.append("exit status 0")
    for n in needles:  # a tuple: any one of its strings
        alts = n if isinstance(n, tuple) else (n,)
        if not any(a in out for a in alts):
            problems.append(f"message lacks {' or '.join(repr(a) for a in alts)}")
    if fx is not None:
        final = os.path.join(fx.run_dir, "final")
        if os.path.exists(final):
            problems.append(f"partial output: {final} exists")
        if glob.glob(os.path.join(fx.run_dir, "checkpoints", "step-*")):
            problems.append("partial output: a checkpoint was written")
        tmp = partial_files(fx.root)
        if tmp:
            problems.append(f"half-written files: {tmp}")
        if before_work and os.path.exists(fx.run_dir):
            problems.append(f"run directory {fx.run_dir} created although the input is rejected before any work")
    for o in outputs:
        if glob.glob(o):
            problems.append(f"partial output: {glob.glob(o)}")
    shown = "\n    ".join(out.strip().splitlines()[-12:])
    if problems:
        raise SystemExit("FAIL: " + "; ".join(problems) + f"\n  exit {rc}, output (last lines):\n    {shown}")
    first = needles[0] if needles and isinstance(needles[0], str) else None
    print(f"ok: exit {rc}; message: {next((l for l in out.splitlines() if first and first in l), '?')}")


# ------------------------------------------------------------------ control

def case_control_valid(fx):
    """The unbroken set-up runs to the end: every other case fails because of what it breaks."""
    rc, out = run_daemon(fx)
    if rc != 0 or not os.path.exists(os.path.join(fx.run_dir, "final", "model.safetensors")):
        raise SystemExit(f"FAIL: the valid set-up does not run: exit {rc}\n{out[-1500:]}")
    rc, out = run_daemon(fx, np_=2, extra=["--set", f"run.dir={fx.run_dir}-2"])
    if rc != 0 or not os.path.exists(os.path.join(fx.run_dir + "-2", "final", "model.safetensors")):
        raise SystemExit(f"FAIL: the valid set-up does not run on 2 ranks: exit {rc}\n{out[-1500:]}")
    o = os.path.join(fx.root, "data-out")
    p = os.path.join(fx.root, "t.txt")
    open(p, "w").write("hello there\n\nworld\n" * 50)
    rc, out = run_data(["--out", o, p])
    if rc != 0 or not glob.glob(os.path.join(o, "train-*.h5")):
        raise SystemExit(f"FAIL: projcomp-data on valid text: exit {rc}\n{out}")
    print("ok: valid set-up runs on 1 and 2 ranks; projcomp-data converts valid text")


# ------------------------------------------------------------------ cases: model files

def case_st_truncated(fx):
    p = os.path.join(fx.base, "model.safetensors")
    data = open(p, "rb").read()
    open(p, "wb").write(data[:len(data) - 100])
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [p, "outside the data section"], fx)


def case_st_header_lies(fx):
    """The header claims a tensor ends past the end of the file."""
    p = os.path.join(fx.base, "model.safetensors")
    data = bytearray(open(p, "rb").read())
    n = int.from_bytes(data[:8], "little")
    hdr = json.loads(data[8:8 + n])
    name = "model.layers.1.mlp.down_proj.weight"
    b, e = hdr[name]["data_offsets"]
    hdr[name]["data_offsets"] = [b + 1 << 20, e + 1 << 20]
    text = json.dumps(hdr).encode()
    text += b" " * (n - len(text)) if len(text) <= n else b""
    out_b = (len(text)).to_bytes(8, "little") + text + bytes(data[8 + n:])
    open(p, "wb").write(out_b)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [p, name, "data_offsets"], fx)


def case_st_overlap(fx):
    """Two tensors' data_offsets overlap."""
    p = os.path.join(fx.base, "model.safetensors")
    data = bytearray(open(p, "rb").read())
    n = int.from_bytes(data[:8], "little")
    hdr = json.loads(data[8:8 + n])
    a, b = "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"
    hdr[b]["data_offsets"] = list(hdr[a]["data_offsets"])
    text = json.dumps(hdr).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    open(p, "wb").write(len(text).to_bytes(8, "little") + text + bytes(data[8 + n:]))
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [p, "overlap"], fx)


def case_st_wrong_dtype(fx):
    t = base_tensors()
    name = "model.layers.0.self_attn.q_proj.weight"
    t[name] = t[name].astype(np.int64)
    write_base(fx.base, tensors=t)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [name, "I64"], fx)


def case_st_shape_mismatch(fx):
    t = base_tensors()
    name = "model.layers.1.mlp.up_proj.weight"
    t[name] = t[name][:F - 8]
    write_base(fx.base, tensors=t)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [name, "shape"], fx)


def case_st_missing_tensor(fx):
    t = base_tensors()
    name = "model.layers.1.self_attn.v_proj.weight"
    del t[name]
    write_base(fx.base, tensors=t)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [name, fx.base], fx)


def case_st_untied_no_head(fx):
    """config.json says tie_word_embeddings: false but the file has no lm_head.weight: the
    head is missing (not the embedding taken in its place), for compress and prune."""
    t = base_tensors()
    del t["lm_head.weight"]
    write_base(fx.base, tensors=t)
    for mode in ["compress", "prune"]:
        fx.sections["run"]["mode"] = mode
        rc, out = run_daemon(fx, job=False, extra=["--cfg", fx.write_job()])
        expect_failure(rc, out, ["lm_head.weight", fx.base], fx)


def case_st_tied_extra_head(fx):
    """config.json ties the head to the embedding, but the file also holds an lm_head.weight
    of other values (which one a tied model reads would decide its outputs): every mode
    refuses it naming the file. A copy of the embedding is accepted."""
    cfg = base_config()
    cfg["tie_word_embeddings"] = True
    write_base(fx.base, cfg=cfg)  # base_tensors() holds an lm_head.weight unlike the embedding
    for sets in (["run.mode=compress"], ["run.mode=prune"], ["run.mode=eval"],
                 ["run.mode=eval", "eval.stream_layers=true"]):
        rc, out = run_daemon(fx, extra=[a for x in sets for a in ("--set", x)])
        expect_failure(rc, out, ["lm_head.weight", "tie_word_embeddings", os.path.join(fx.base, "model.safetensors")],
                       fx)
    t = base_tensors()
    t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
    write_base(fx.base, cfg=cfg, tensors=t)
    rc, out = run_daemon(fx, extra=["--set", "run.mode=eval"])
    if rc != 0:
        raise SystemExit(f"FAIL: a tied base whose lm_head.weight is the embedding: exit {rc}\n{out[-1500:]}")


def case_st_nan_weight(fx):
    t = base_tensors()
    name = "model.layers.0.mlp.gate_proj.weight"
    t[name][3, 5] = np.nan
    write_base(fx.base, tensors=t)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [name, ("NaN", "non-finite", "not finite")], fx)


def case_st_inf_weight(fx):
    t = base_tensors()
    name = "lm_head.weight"
    t[name][0, 0] = np.inf
    write_base(fx.base, tensors=t)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [name, ("Inf", "inf", "non-finite", "not finite")], fx)


def case_index_missing_shard(fx):
    """A sharded base whose index names a shard file that is not there."""
    t = base_tensors()
    os.remove(os.path.join(fx.base, "model.safetensors"))
    from safetensors.numpy import save_file
    names = sorted(t)
    half = len(names) // 2
    save_file({k: t[k] for k in names[:half]}, os.path.join(fx.base, "model-00001-of-00002.safetensors"))
    idx = {"metadata": {}, "weight_map": {k: ("model-00001-of-00002.safetensors" if i < half else
                                              "model-00002-of-00002.safetensors") for i, k in enumerate(names)}}
    json.dump(idx, open(os.path.join(fx.base, "model.safetensors.index.json"), "w"))
    rc, out = run_daemon(fx)
    expect_failure(rc, out, ["model-00002-of-00002.safetensors", "does not exist"], fx)


def case_config_json_mismatch(fx):
    """config.json says a wider model than the weights."""
    cfg = base_config()
    cfg["intermediate_size"] = F * 2
    write_base(fx.base, cfg=cfg)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, ["model.layers.0.mlp.gate_proj.weight", "shape"], fx)


def case_config_json_narrower(fx):
    """config.json says a narrower model than the weights (hidden_size, intermediate_size
    or vocab_size): every path that reads the base refuses it naming the tensor and both
    shapes, where the importance scores, prune's slices, the streamed embedding and
    blocks cut from a matrix had trusted the file's shape."""
    runs = [("hidden_size", D - 8, "model.embed_tokens.weight", [64, D], ["run.mode=compress",
                                                                          "compress.importance=activation"]),
            ("hidden_size", D - 8, "model.layers.0.self_attn.q_proj.weight", [H * HD, D],
             ["run.mode=prune", "compress.importance=magnitude"]),
            ("intermediate_size", F - 16, "model.layers.0.mlp.gate_proj.weight", [F, D],
             ["run.mode=compress", "compress.importance=magnitude", "compress.d_ff=16"]),
            ("hidden_size", D - 8, "model.embed_tokens.weight", [V, D],
             ["run.mode=eval", "eval.stream_layers=true"]),
            ("vocab_size", V - 4, "model.embed_tokens.weight", [V, D],
             ["compress.split_mb=0.001", "compress.d_model=24"])]
    for key, value, tensor, shape, sets in runs:
        cfg = base_config()
        cfg[key] = value
        write_base(fx.base, cfg=cfg)
        if key == "vocab_size":  # shards the smaller vocabulary passes (the tensors are at fault)
            toks = pclib.markov_tokens(3000, value, seed=1)
            pclib.write_shard(fx.train, toks[:2500], value)
            pclib.write_shard(fx.valid, toks[2500:], value)
        extra = [a for x in sets for a in ("--set", x)]
        rc, out = run_daemon(fx, np_=2 if "compress.split_mb=0.001" in sets else 1, extra=extra)
        expect_failure(rc, out, [tensor, f"has shape [{shape[0]}, {shape[1]}]", "expected"], fx)


def case_resume_other_widths(fx):
    """A finished run resumed at other widths (compress.d_model changed): refused naming
    the key that changed and the way out, its checkpoints kept."""
    rc, out = run_daemon(fx)
    if rc != 0:
        raise SystemExit(f"FAIL: the first run failed (exit {rc}):\n{out[-2000:]}")
    ckpts = sorted(os.listdir(os.path.join(fx.run_dir, "checkpoints")))
    rc, out = run_daemon(fx, extra=["--set", "train.steps=4", "--set", "compress.d_model=24"])
    expect_failure(rc, out, ["compress.d_model: 16 -> 24", "resumes at the widths it was trained at",
                             "use another run.dir"])
    if sorted(os.listdir(os.path.join(fx.run_dir, "checkpoints"))) != ckpts:
        raise SystemExit("FAIL: the checkpoints changed")


def case_config_json_invalid(fx):
    open(os.path.join(fx.base, "config.json"), "w").write('{"hidden_size": 32,,}')
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [os.path.join(fx.base, "config.json")], fx)


def case_config_json_missing_key(fx):
    cfg = base_config()
    del cfg["num_attention_heads"]
    write_base(fx.base, cfg=cfg)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [os.path.join(fx.base, "config.json"), "num_attention_heads"], fx)


def case_pretrain_config_bad(fx):
    """pretrain's model.config (a config.json) missing, then lacking a key: refused before
    any work (exit 2, no run directory), naming the file (and the key)."""
    cfg_path = os.path.join(fx.root, "model.json")

    def pretrain(s):
        s["run"]["mode"] = "pretrain"
        s["model"] = {"config": cfg_path}
        s.pop("compress", None)
    config_case(fx, pretrain, lambda fx: [cfg_path])
    cfg = base_config()
    del cfg["num_attention_heads"]
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [cfg_path, "num_attention_heads"], fx, before_work=True)
    if rc != 2:
        raise SystemExit(f"FAIL: exit {rc}, expected 2 (a config error before any work)")


def case_output_is_base(fx):
    """The final model would go into model.base itself (output.dir naming it through a
    symlink, or run.dir whose final/ it is): refused before any work, the base intact."""
    def snapshot(d):
        return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}
    link = os.path.join(fx.root, "base-link")
    os.symlink(fx.base, link)
    before = snapshot(fx.base)
    rc, out = run_daemon(fx, extra=["--set", f"output.dir={link}"])
    expect_failure(rc, out, [link, "model.base", "output.dir"], fx, before_work=True)
    rc_dry, out = run_daemon(fx, extra=["--set", f"output.dir={link}", "--dry-run", "-np", "2"])  # the dry run too
    expect_failure(rc_dry, out, [link, "model.base", "output.dir"], fx, before_work=True)
    nested = os.path.join(fx.root, "old-run", "final")
    os.makedirs(os.path.dirname(nested))
    os.rename(fx.base, nested)
    rc2, out2 = run_daemon(fx, extra=["--set", f"model.base={nested}", "--set", f"run.dir={os.path.dirname(nested)}",
                                      "--set", "run.mode=prune"])
    os.rename(nested, fx.base)
    expect_failure(rc2, out2, [nested, "model.base"], fx)
    # output.dir a directory holding the base (its parent, given through a symbolic link
    # and "..": L/../../../NAME is above the root lexically, but L -> x/y, so the kernel's
    # is the root itself, which holds the base); and the base itself that way
    os.makedirs(os.path.join(fx.root, "x", "y"))
    os.symlink(os.path.join(fx.root, "x", "y"), os.path.join(fx.root, "L"))
    outs = [os.path.join(fx.root, "L", "..", "..", "..", os.path.basename(fx.root)),
            os.path.join(fx.root, "L", "..", "..", "base")]
    rcs = []
    for above in outs:
        rcs.append(run_daemon(fx, extra=["--set", f"output.dir={above}"]))
        expect_failure(rcs[-1][0], rcs[-1][1], [above, "model.base", "output.dir"], fx, before_work=True)
    if (rc, rc_dry, rc2) != (2, 2, 2) or any(r != 2 for r, _ in rcs) or snapshot(fx.base) != before:
        raise SystemExit(f"FAIL: exits {rc}, {rc_dry}, {rc2}, {[r for r, _ in rcs]} (expected 2: a config error), "
                         f"base unchanged: {snapshot(fx.base) == before}")


def case_output_not_a_model(fx):
    """output.dir names something that exists and is not a model projcompd wrote (a
    directory of other files, one without config.json, a file, a symbolic link): the
    final model would replace it whole, so the job is refused before any work (the dry
    run too) and it is left as it was."""
    def tree(p):
        if os.path.islink(p) or os.path.isfile(p):
            return (os.readlink(p),) if os.path.islink(p) else open(p, "rb").read()
        return {n: tree(os.path.join(p, n)) for n in sorted(os.listdir(p))}
    models = os.path.join(fx.root, "models")
    os.makedirs(os.path.join(models, "other-model"))
    open(os.path.join(models, "other-model", "weights.bin"), "wb").write(b"precious")
    open(os.path.join(models, "README"), "w").write("notes\n")
    no_config = os.path.join(fx.root, "half")
    os.makedirs(no_config)
    open(os.path.join(no_config, "model.safetensors"), "wb").write(b"x")
    notes = os.path.join(fx.root, "notes.txt")
    open(notes, "w").write("my notes\n")
    link = os.path.join(fx.root, "out-link")
    os.symlink(models, link)
    cases = [(models, "holds 'other-model'"), (no_config, "has no config.json"), (notes, "not a directory"),
             (link, "symbolic link")]
    before = {p: tree(p) for p, _ in cases}
    for path, why in cases:
        for dry in ([], ["--dry-run", "-np", "2"]):
            rc, out = run_daemon(fx, extra=["--set", f"output.dir={path}"] + dry)
            expect_failure(rc, out, [path, why, "output.dir"], fx, before_work=True)
            if rc != 2:
                raise SystemExit(f"FAIL: output.dir {path}{' (dry run)' if dry else ''}: exit {rc}, expected 2")
    after = {p: tree(p) for p, _ in cases}
    if after != before:
        raise SystemExit(f"FAIL: output.dir's contents changed: {before} -> {after}")


def case_output_of_another_run(fx):
    """Two runs (two run.dirs) given one output.dir: the second is refused before any work,
    naming the first run, and the first run's model is left as it was (the final model
    records its run in projcompd.json); a rerun of the first job replaces it. A save of
    another run under way beside it (OUT.tmp-PID holding that run's projcompd.json) is
    left alone by this run's cleanup, where a killed save of its own is removed."""
    def tree(p):
        return {n: open(os.path.join(p, n), "rb").read() for n in sorted(os.listdir(p))}
    out_dir = os.path.join(fx.root, "models", "small")
    rc, out = run_daemon(fx, extra=["--set", f"output.dir={out_dir}"])
    prov = json.load(open(os.path.join(out_dir, "projcompd.json"))) if rc == 0 else {}
    if rc != 0 or prov.get("run_dir") != os.path.realpath(fx.run_dir) or prov.get("mode") != "compress" or \
            prov.get("steps") != 2 or prov.get("base") != os.path.realpath(fx.base):
        raise SystemExit(f"FAIL: the first run (exit {rc}) wrote no projcompd.json naming its run: {prov}\n"
                         f"{out[-1500:]}")
    before = tree(out_dir)
    other = fx.run_dir + "-2"
    for dry in ([], ["--dry-run", "-np", "2"]):
        rc, out = run_daemon(fx, extra=["--set", f"output.dir={out_dir}", "--set", f"run.dir={other}"] + dry)
        expect_failure(rc, out, [out_dir, "another run", os.path.realpath(fx.run_dir), other])
        if rc != 2 or os.path.exists(other) or tree(out_dir) != before:
            raise SystemExit(f"FAIL: the second run{' (dry run)' if dry else ''}: exit {rc} (expected 2), its run "
                             f"directory made: {os.path.exists(other)}, the first run's model changed: "
                             f"{tree(out_dir) != before}")
    theirs, mine = out_dir + ".tmp-999998", out_dir + ".tmp-999999"
    for d, run in ((theirs, "/elsewhere/run-x"), (mine, os.path.realpath(fx.run_dir))):
        os.makedirs(d)
        json.dump({"run_dir": run}, open(os.path.join(d, "projcompd.json"), "w"))
    rc, out = run_daemon(fx, extra=["--set", f"output.dir={out_dir}", "--set", "train.steps=3"])
    left = sorted(n for n in os.listdir(os.path.dirname(out_dir)))
    shutil.rmtree(theirs, ignore_errors=True)
    if rc != 0 or json.load(open(os.path.join(out_dir, "projcompd.json"))).get("steps") != 3 or \
            left != ["small", "small.tmp-999998"] or "/elsewhere/run-x" not in out:
        raise SystemExit(f"FAIL: the first job's rerun: exit {rc}, left {left} (expected its model replaced, "
                         f"another run's save under way kept and named, its own killed save removed)\n{out[-1500:]}")
    print("ok: a rerun of the first job replaces its model; another run's save under way is left alone")


def case_output_in_run_dir(fx):
    """output.dir is run.dir itself, a directory above it, or one of the run directory's
    own parts (checkpoints/, logs/): the final model's save would delete them. Refused
    before any work; RUN/final-2 (a directory of its own inside the run) is fine."""
    for path, needle in [(fx.run_dir, "run.dir"), (fx.root, "run.dir"),
                         (os.path.join(fx.run_dir, "checkpoints"), "checkpoints"),
                         (os.path.join(fx.run_dir, "logs", "x"), "logs"), (os.path.join(fx.run_dir, ".lock"), ".lock"),
                         (os.path.join(fx.root, "new", "."), "ends in '.'")]:
        rc, out = run_daemon(fx, extra=["--set", f"output.dir={path}"])
        expect_failure(rc, out, [path, needle, "output.dir"], fx, before_work=True)
        if rc != 2:
            raise SystemExit(f"FAIL: output.dir {path}: exit {rc}, expected 2")
    rc, out = run_daemon(fx, extra=["--set", f"output.dir={os.path.join(fx.run_dir, 'final-2')}", "--dry-run"])
    if rc != 0:
        raise SystemExit(f"FAIL: output.dir RUN/final-2 refused (exit {rc}):\n{out[-2000:]}")
    print("ok: RUN/final-2 is accepted")


def case_base_missing(fx):
    missing = os.path.join(fx.root, "no-such-model")
    fx.sections["model"]["base"] = missing
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [missing], fx)


def case_base_is_file(fx):
    f = os.path.join(fx.root, "a-file")
    open(f, "w").write("not a model\n")
    fx.sections["model"]["base"] = f
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [f], fx)


def case_base_no_weights(fx):
    os.remove(os.path.join(fx.base, "model.safetensors"))
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [fx.base, "model.safetensors"], fx)


def case_base_unreadable(fx):
    """A base directory this process cannot list (skipped as root, who reads anything)."""
    if os.geteuid() == 0:
        # root ignores permissions: make the weights a directory instead, which no user can read as a file
        p = os.path.join(fx.base, "model.safetensors")
        os.remove(p)
        os.mkdir(p)
        rc, out = run_daemon(fx)
        expect_failure(rc, out, [p], fx)
        return
    os.chmod(fx.base, 0)
    try:
        rc, out = run_daemon(fx)
    finally:
        os.chmod(fx.base, 0o755)
    expect_failure(rc, out, [fx.base], fx)


# ------------------------------------------------------------------ cases: data

def case_tokens_out_of_range(fx):
    toks = pclib.markov_tokens(2500, V, seed=1)
    toks[::3] = V + 5  # every window holds some (ids are checked when read)
    pclib.write_shard(fx.train, toks, V)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [fx.train, str(V + 5)], fx)


def case_shard_vocab_too_big(fx):
    pclib.write_shard(fx.train, pclib.markov_tokens(2500, V, seed=1), V * 2)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [fx.train, "vocab_size"], fx)


def case_empty_shard(fx):
    pclib.write_shard(fx.train, np.zeros(0, np.uint16), V)
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [fx.train, "0 tokens"], fx)


def case_seq_len_too_long(fx):
    pclib.write_shard(fx.valid, pclib.markov_tokens(40, V, seed=2), V)
    fx.sections["data"]["seq_len"] = 48
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [fx.valid, "seq_len"], fx)


def case_shard_not_hdf5(fx):
    open(fx.train, "w").write("just text\n")
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [fx.train, "not an HDF5 file"], fx)


def case_np2_shard_not_hdf5(fx):
    """Two ranks: the failure takes the whole job down (no hang) and names the file."""
    open(fx.valid, "w").write("just text\n")
    rc, out = run_daemon(fx, np_=2)
    expect_failure(rc, out, [fx.valid, "not an HDF5 file"], fx)


def case_np2_tokens_out_of_range(fx):
    toks = pclib.markov_tokens(2500, V, seed=1)
    toks[::3] = V + 7
    pclib.write_shard(fx.train, toks, V)
    rc, out = run_daemon(fx, np_=2)
    expect_failure(rc, out, [fx.train, str(V + 7), "vocab_size"], fx)


def case_shard_float_tokens(fx):
    import h5py
    with h5py.File(fx.train, "w") as f:
        d = f.create_dataset("tokens", data=np.ones(2500, np.float32))
        d.attrs["vocab_size"] = V
        d.attrs["eos_id"] = 0
        d.attrs["tokenizer"] = "test"
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [fx.train, "float32"], fx)


def case_shard_missing_attr(fx):
    import h5py
    with h5py.File(fx.valid, "a") as f:
        del f["tokens"].attrs["eos_id"]
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [fx.valid, "eos_id"], fx)


def case_train_glob_empty(fx):
    g = os.path.join(fx.root, "nothing-*.h5")
    fx.sections["data"]["train"] = [g]
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [g, "no file matches"], fx)


def case_data_dir_missing(fx):
    g = os.path.join(fx.root, "no-such-dir", "train-*.h5")
    fx.sections["data"]["train"] = [g]
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [g], fx)


# ------------------------------------------------------------------ cases: job config

def config_case(fx, edit, needles_fn, np_=1, extra=()):
    edit(fx.sections)
    fx.write_job()
    needles = needles_fn(fx)
    rc, out = run_daemon(fx, np_=np_, extra=extra)
    expect_failure(rc, out, needles, fx, before_work=True)


def case_cfg_unknown_key(fx):
    config_case(fx, lambda s: s["train"].update(lrr=1e-3),
                lambda fx: [f"{fx.job}:{fx.line_of('lrr:')}", "unknown key 'train.lrr'", "train.lr"])


def case_cfg_wrong_type(fx):
    config_case(fx, lambda s: s["train"].update(steps="many"),
                lambda fx: [f"{fx.job}:{fx.line_of('steps:')}", "train.steps"])


def case_cfg_missing_required(fx):
    config_case(fx, lambda s: s["compress"].pop("d_model"), lambda fx: ["compress.d_model", fx.job])


def case_cfg_impossible_value(fx):
    config_case(fx, lambda s: s["train"].update(lr=-0.5), lambda fx: [f"{fx.job}:{fx.line_of('lr: -0.5')}", "train.lr"])


def case_cfg_d_model_too_big(fx):
    """compress.d_model larger than the base's hidden_size: needs the base, rejected before training."""
    fx.sections["compress"]["d_model"] = D * 2
    fx.write_job()
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [f"{fx.job}:{fx.line_of('d_model:')}", "compress.d_model", str(D)], fx)


def case_cfg_d_ff_list_length(fx):
    fx.sections["compress"]["d_ff"] = [32, 32, 32]
    fx.write_job()
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [f"{fx.job}:{fx.line_of('d_ff:')}", "compress.d_ff", "3 entries", f"{L} layers"], fx)


def case_cfg_d_ff_too_big(fx):
    fx.sections["compress"]["d_ff"] = [32, F + 1]
    fx.write_job()
    rc, out = run_daemon(fx)
    expect_failure(rc, out, ["compress.d_ff", "layer 1", str(F)], fx)


def case_cfg_batch_ranks(fx):
    config_case(fx, lambda s: s["train"].update(global_batch=6, micro_batch=2),
                lambda fx: [f"{fx.job}:{fx.line_of('global_batch:')}", "train.global_batch", "2 x 2"], np_=2)


def case_cfg_micro_gt_global(fx):
    config_case(fx, lambda s: s["train"].update(global_batch=2, micro_batch=4),
                lambda fx: ["train.micro_batch", fx.job])


def case_cfg_syntax_error(fx):
    fx.write_job()
    with open(fx.job, "a") as f:
        f.write("train: [unclosed\n")
    rc, out = run_daemon(fx)
    expect_failure(rc, out, [fx.job, "YAML"], fx, before_work=True)


def case_cfg_set_bad_value(fx):
    config_case(fx, lambda s: None, lambda fx: ["--set train.steps=ten", "train.steps"], extra=["--set", "train.steps=ten"])


def case_cfg_set_unknown(fx):
    config_case(fx, lambda s: None, lambda fx: ["--set train.stepz=3", "unknown key 'train.stepz'"],
                extra=["--set", "train.stepz=3"])


def case_cfg_store_grads_bad(fx):
    config_case(fx, lambda s: s["compress"].update(store_grads="maybe"),
                lambda fx: [f"{fx.job}:{fx.line_of('store_grads:')}", "compress.store_grads", "auto"])


def case_cfg_memory_gib_negative(fx):
    config_case(fx, lambda s: s.setdefault("backend", {}).update(memory_gib=-1),
                lambda fx: [f"{fx.job}:{fx.line_of('memory_gib:')}", "backend.memory_gib"])


def case_cfg_memory_gib_too_small(fx):
    """backend.memory_gib below the plan: stopped before any weight is read, with the remedies."""
    fx.sections.setdefault("backend", {})["memory_gib"] = 1e-5
    fx.write_job()
    rc, out = run_daemon(fx)
    expect_failure(rc, out, ["the plan needs", "but backend.memory_gib on the cpu backend", "; try "], fx)


def case_cfg_cuda_without_gpu(fx):
    """backend.device cuda where no GPU is visible (skipped on a machine with one)."""
    p = subprocess.run([os.path.join(pclib.BUILD, "tests", "e2e", "gpu-smoke")], stdout=subprocess.PIPE)
    if p.returncode != 77:
        print("a GPU is visible: nothing to check")
        sys.exit(77)
    rc, out = run_daemon(fx, extra=["--set", "backend.device=cuda"])
    expect_failure(rc, out, ["backend.device is 'cuda'", "sees no GPU", fx.job], fx)


def case_cfg_nccl_without_cuda(fx):
    rc, out = run_daemon(fx, extra=["--set", "backend.comm=nccl", "--set", "backend.device=cpu"])
    expect_failure(rc, out, ["--set backend.comm=nccl", "key 'backend.comm' is 'nccl'", "NCCL needs the cuda device"],
                   fx, before_work=True)


def case_cfg_logits_chunk_with_distill(fx):
    rc, out = run_daemon(fx, extra=["--set", "train.logits_chunk=8", "--set", "distill.alpha=0.5"])
    expect_failure(rc, out, ["--set train.logits_chunk=8", "key 'train.logits_chunk' (8)", "distill.enabled",
                             "set it to 0"], fx, before_work=True)


def case_cfg_distill_in_pretrain(fx):
    rc, out = run_daemon(fx, extra=["--set", "run.mode=pretrain", "--set", "distill.alpha=0.5"])
    expect_failure(rc, out, ["--set distill.alpha=0.5", "distill needs a teacher", "pretrain has none"], fx,
                   before_work=True)


def case_cfg_config_and_base(fx):
    """model.config beside model.base would be ignored (the shape and weights come from the
    base): refused in pretrain, which takes either, and in the modes that read a base."""
    cfg = os.path.join(fx.base, "config.json")
    for mode in ("pretrain", "compress"):
        rc, out = run_daemon(fx, extra=["--set", f"run.mode={mode}", "--set", f"model.config={cfg}"])
        expect_failure(rc, out, ["model.config", "model.base", "both set", cfg], fx, before_work=True)


def case_cfg_stream_layers_in_compress(fx):
    rc, out = run_daemon(fx, extra=["--set", "eval.stream_layers=true"])
    expect_failure(rc, out, ["--set eval.stream_layers=true", "applies to run.mode eval only"], fx, before_work=True)


# ------------------------------------------------------------------ cases: command line

def case_cli_no_cfg(fx):
    rc, out = run_daemon(fx, job=False)
    expect_failure(rc, out, ["--cfg JOB.yaml is required", "usage:"], fx, before_work=True)


def case_cli_unknown_arg(fx):
    rc, out = run_daemon(fx, extra=["--bogus"])
    expect_failure(rc, out, ["unknown argument '--bogus'"], fx, before_work=True)


def case_cli_set_no_value(fx):
    rc, out = run_daemon(fx, extra=["--set"])
    expect_failure(rc, out, ["--set needs a value"], fx, before_work=True)


def case_cli_device_gib_bad(fx):
    rc, out = run_daemon(fx, extra=["--dry-run", "--device-gib", "0"])
    expect_failure(rc, out, ["--device-gib needs a positive number of GiB"], fx, before_work=True)
    if rc != 2:
        raise SystemExit(f"FAIL: exit {rc}, expected 2 (a command-line error)")
    for bad in ["inf", "nan", "1e300", "0x10", " 16"]:  # decimal, as numbers in the job file
        rc, out = run_daemon(fx, extra=["--dry-run", "--device-gib", bad])
        expect_failure(rc, out, ["--device-gib needs a positive number of GiB"], fx, before_work=True)
    rc, out = run_daemon(fx, extra=["--device-gib", "80"])  # not a dry run: nothing would use it
    expect_failure(rc, out, ["--device-gib goes with --dry-run"], fx, before_work=True)


def case_cli_np_bad(fx):
    """-np: a whole rank count (not a prefix of one, nor one that wraps an int), and only
    with --dry-run, where a run would otherwise ignore it."""
    for bad in ["0", "2abc", "2.9", "4294967298", "-3", ""]:
        rc, out = run_daemon(fx, extra=["--dry-run", "-np", bad])
        expect_failure(rc, out, ["-np needs a rank count, a whole number from 1 to"], fx, before_work=True)
        if rc != 2:
            raise SystemExit(f"FAIL: -np '{bad}': exit {rc}, expected 2 (a command-line error)")
    rc, out = run_daemon(fx, extra=["-np", "4"])
    expect_failure(rc, out, ["-np goes with --dry-run"], fx, before_work=True)


def case_cli_dry_run_does_not_fit(fx):
    """--dry-run --device-gib: exit 1 and the plan's remedies when the largest rank does not fit."""
    rc, out = run_daemon(fx, extra=["--dry-run", "-np", "2", "--device-gib", "1e-5"])  # 10 KiB
    expect_failure(rc, out, ["the plan needs", "but a 1e-05 GiB device has", "; try "], fx, before_work=True)
    if rc != 1:
        raise SystemExit(f"FAIL: exit {rc}, expected 1 (does not fit)\n{out[-800:]}")
    rc, out = run_daemon(fx, extra=["--dry-run", "-np", "2", "--device-gib", "100"])
    if rc != 0 or "# fits a 100 GiB device: the largest rank" not in out:
        raise SystemExit(f"FAIL: a 100 GiB device: exit {rc}\n{out[-800:]}")


def case_cli_dry_run_no_plan(fx):
    """--dry-run of a mode that has no plan: exit 2 saying so and how that mode holds the
    model (the whole model on every rank; the base a layer or a tensor at a time), not a
    compress plan of the job."""
    for mode, why in [("pretrain", "every rank holds the whole model"), ("eval", "every rank holds the whole model"),
                      ("importance", "it reads the base a layer (activation) or a tensor (magnitude) at a time"),
                      ("eval --set eval.stream_layers=true", "eval.stream_layers reads the base a layer at a time")]:
        rc, out = run_daemon(fx, extra=["--dry-run", "-np", "2", "--set", f"run.mode={mode.split()[0]}"] +
                             mode.split()[1:])
        expect_failure(rc, out, ["--dry-run lays out compress and prune jobs",
                                 f"run.mode {mode.split()[0]} has no plan ({why}"], fx, before_work=True)
        if rc != 2 or "# rank" in out:
            raise SystemExit(f"FAIL: {mode}: exit {rc} (expected 2), or a plan printed\n{out[-800:]}")


def case_cli_ranks_disagree(fx):
    """An MPMD launch whose ranks get different --set options: an error on rank 1 alone
    ends every rank at once (rank 0 waited in its first collective for ever), and ranks
    given different valid jobs are refused before any work (they trained together, or
    crashed, depending on the key)."""
    job = fx.write_job()
    for extra, needles in [(["--set", "train.lr=abc"], ["rank 1: error:", "train.lr"]),
                           (["--set", "run.seed=7"], ["rank 1 was given another job than rank 0"])]:
        args = ["mpirun", "--oversubscribe", "-np", "1", pclib.PROJCOMPD, "--cfg", job, ":",
                "-np", "1", pclib.PROJCOMPD, "--cfg", job, *extra]
        try:
            p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=pclib.env(),
                               timeout=60)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"FAIL: {extra}: the job hangs")
        expect_failure(p.returncode, p.stdout + p.stderr, needles, fx, before_work=True)


def case_cli_cfg_missing_file(fx):
    p = os.path.join(fx.root, "nope.yaml")
    rc, out = run_daemon(fx, job=False, extra=["--cfg", p])
    expect_failure(rc, out, [p, "No such file"], fx, before_work=True)


def case_cli_cfg_is_dir(fx):
    rc, out = run_daemon(fx, job=False, extra=["--cfg", fx.root])
    expect_failure(rc, out, [f"{fx.root}: read error: Is a directory"], fx, before_work=True)


def case_cli_cfg_empty(fx):
    """--cfg '' (an unset $JOB) is refused, not a run on the defaults and the --set values."""
    for args in (["--cfg", ""], ["--cfg="]):
        rc, out = run_daemon(fx, job=False, extra=args + ["--set", f"model.base={fx.base}"])
        expect_failure(rc, out, ["--cfg names no file (an empty string)"], fx, before_work=True)
        if rc != 2:
            raise SystemExit(f"FAIL: {args}: exit {rc}, expected 2 (a command-line error)")


def case_cli_cfg_twice(fx):
    """A second --cfg is refused, not silently the one used."""
    other = os.path.join(fx.root, "other.yaml")
    rc, out = run_daemon(fx, extra=["--cfg=" + other])
    expect_failure(rc, out, ["--cfg given twice", other, "override its keys with --set"], fx, before_work=True)


def case_cli_too_many_sets(fx):
    """Past 256 --set options (either spelling) the limit is named, not 'unknown argument'."""
    for spelling in (["--set", "train.steps=1"], ["--set=train.steps=1"]):
        rc, out = run_daemon(fx, extra=spelling * 257)
        expect_failure(rc, out, ["more than 256 --set options"], fx, before_work=True)


def case_cli_exit_status(fx):
    """Command line and config errors exit with status 2 (documented in --help)."""
    rc, out = run_daemon(fx, extra=["--bogus"])
    if rc != 2:
        raise SystemExit(f"FAIL: exit status {rc} for a bad argument, --help documents 2\n{out[-600:]}")
    print("ok: exit 2")


# ------------------------------------------------------------------ cases: projcomp-data

def data_case(fx, args, needles, out_dir=None):
    rc, out = run_data(args)
    outputs = [os.path.join(out_dir, "*")] if out_dir else []
    expect_failure(rc, out, needles, outputs=outputs)
    if out_dir and os.path.isdir(out_dir) and os.listdir(out_dir):
        raise SystemExit(f"FAIL: {out_dir} holds {os.listdir(out_dir)} after a failed run")


def case_data_no_args(fx):
    data_case(fx, [], ["projcomp-data", "usage"])


def case_data_missing_input(fx):
    o = os.path.join(fx.root, "out")
    p = os.path.join(fx.root, "missing.txt")
    data_case(fx, ["--out", o, p], [p], out_dir=o)


def case_data_empty_input(fx):
    o = os.path.join(fx.root, "out")
    p = os.path.join(fx.root, "empty.txt")
    open(p, "w").close()
    data_case(fx, ["--out", o, p], [p, "empty input"], out_dir=o)


def out_and_text(fx):
    """An output directory to be (ROOT/out) and a small text file for projcomp-data."""
    p = os.path.join(fx.root, "t.txt")
    open(p, "w").write("hello\n\nworld\n")
    return os.path.join(fx.root, "out"), p


def case_data_bad_fraction(fx):
    o, p = out_and_text(fx)
    data_case(fx, ["--out", o, "--valid-fraction", "1.5", p], ["--valid-fraction 1.5"], out_dir=o)


def case_data_bad_shard_tokens(fx):
    o, p = out_and_text(fx)
    data_case(fx, ["--out", o, "--shard-tokens", "-4", p], ["--shard-tokens -4"], out_dir=o)


def case_data_eos_token_without_tokenizer(fx):
    """--eos-token names a token of --tokenizer's vocabulary: alone it is refused, not ignored."""
    o, p = out_and_text(fx)
    data_case(fx, ["--out", o, "--eos-token", "</s>", p], ["--eos-token </s>: only with --tokenizer"], out_dir=o)


def case_data_python_without_tokenizer(fx):
    """--python runs --tokenizer's helper: alone it is refused, not ignored."""
    o, p = out_and_text(fx)
    data_case(fx, ["--out", o, "--python", "/nonexistent/python", p],
              ["--python /nonexistent/python: only with --tokenizer"], out_dir=o)


def case_data_no_bos_without_tokenizer(fx):
    """--no-bos changes how --tokenizer starts a document: alone it is refused, not ignored."""
    o, p = out_and_text(fx)
    data_case(fx, ["--out", o, "--no-bos", p], ["--no-bos: only with --tokenizer"], out_dir=o)


def case_data_no_out(fx):
    p = os.path.join(fx.root, "t.txt")
    open(p, "w").write("hello\n")
    data_case(fx, [p], ["--out DIR is required"])


def case_data_out_exists(fx):
    """Existing shards are refused and left untouched."""
    o = os.path.join(fx.root, "out")
    p = os.path.join(fx.root, "t.txt")
    open(p, "w").write("hello there\n\nworld\n" * 50)
    rc, out = run_data(["--out", o, p])
    if rc != 0:
        raise SystemExit(f"FAIL: first conversion failed: {out}")
    before = {n: os.path.getmtime(os.path.join(o, n)) for n in os.listdir(o)}
    rc, out = run_data(["--out", o, p])
    expect_failure(rc, out, ["already exists"])
    after = {n: os.path.getmtime(os.path.join(o, n)) for n in os.listdir(o)}
    if before != after:
        raise SystemExit(f"FAIL: existing output changed: {before} -> {after}")


def case_data_out_is_file(fx):
    _, p = out_and_text(fx)
    o = os.path.join(fx.root, "out-file")
    open(o, "w").write("x")
    data_case(fx, ["--out", o, p], [o])


def case_data_inspect_bad(fx):
    p = os.path.join(fx.root, "bad.h5")
    open(p, "w").write("not hdf5")
    data_case(fx, ["--inspect", p], [p, "not an HDF5 file"])



def case_data_inspect_with_out(fx):
    """--inspect only reads: --out (and --valid-fraction) with it are refused, not ignored."""
    o = os.path.join(fx.root, "out")
    data_case(fx, ["--inspect", "--out", o, "--valid-fraction", "0.5", fx.train], ["--out: not with --inspect"])
    if os.path.exists(o):
        raise SystemExit(f"FAIL: {o} created")


def case_data_inspect_with_valid_fraction(fx):
    data_case(fx, ["--valid-fraction", "0.5", "--inspect", fx.train], ["--valid-fraction: not with --inspect"])


def case_data_inspect_with_tokenizer(fx):
    data_case(fx, ["--inspect", "--tokenizer", "tok.json", fx.train], ["--tokenizer: not with --inspect"])


CASES = {k[5:]: v for k, v in sorted(globals().items()) if k.startswith("case_")}


def main():
    if len(sys.argv) != 2 or (sys.argv[1] not in CASES and sys.argv[1] not in ("list", "all")):
        raise SystemExit(f"usage: {sys.argv[0]} CASE|list|all\ncases: {' '.join(CASES)}")
    if sys.argv[1] == "list":
        print("\n".join(CASES))
        return
    names = list(CASES) if sys.argv[1] == "all" else [sys.argv[1]]
    failed = []
    for name in names:
        fx = Fixture(name)
        try:
            CASES[name](fx)
        except SystemExit as ex:
            if sys.argv[1] != "all":
                raise
            print(f"{name}: {ex}")
            failed.append(name)
        else:
            shutil.rmtree(fx.root, ignore_errors=True)
    if failed:
        raise SystemExit(f"{len(failed)} case(s) failed: {' '.join(failed)}")


if __name__ == "__main__":
    main()
