"""Shared helpers for the Python end-to-end tests: paths, running projcompd under
mpirun, writing token shards with h5py and job files, reading metrics.

Directories made by tmpdir are removed when the test exits, unless a check or a command
failed or an exception escaped (then they are kept, and named, for a look) or
PC_KEEP_TMP is set (a test that fails by its own exit status loses them: rerun it with
PC_KEEP_TMP=1)."""
import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

BUILD = os.environ.get("PC_BUILD", os.path.join(os.path.dirname(__file__), "..", "build"))
SRC = os.environ.get("PC_SRC", os.path.join(os.path.dirname(__file__), ".."))
PROJCOMPD = os.path.join(BUILD, "daemon", "projcompd")
PROJCOMP_DATA = os.path.join(BUILD, "daemon", "projcomp-data")


def env():
    e = dict(os.environ)
    e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
             OMPI_MCA_btl="self,vader", OMPI_MCA_rmaps_base_oversubscribe="1",
             OPENBLAS_NUM_THREADS="1")
    return e


def run(args, check=True, timeout=600):
    """Run a command; returns CompletedProcess with text stdout/stderr."""
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=env(), timeout=timeout)
    if check and p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        fail(f"command failed ({p.returncode}): {' '.join(args)}")
    return p


def projcompd(np_, cfg, *sets, check=True):
    args = ["mpirun", "--oversubscribe", "-np", str(np_), PROJCOMPD, "--cfg", cfg]
    for s in sets:
        args += ["--set", s]
    return run(args, check=check)


def run_job(root, job, name, np_, *sets):
    """projcompd on np_ ranks with run.dir root/name (and the given --set values); the dir."""
    d = os.path.join(root, name)
    projcompd(np_, job, f"run.dir={d}", *sets)
    return d


def write_shard(path, tokens, vocab_size, eos_id=0, tokenizer="test", dtype="uint16"):
    import h5py
    import numpy as np
    with h5py.File(path, "w") as f:
        d = f.create_dataset("tokens", data=np.asarray(tokens, dtype=dtype))
        d.attrs["vocab_size"] = vocab_size
        d.attrs["eos_id"] = eos_id
        d.attrs["tokenizer"] = tokenizer


def markov_tokens(n, vocab, seed=0):
    """A learnable token stream: a fixed random sparse Markov chain."""
    import numpy as np
    rng = np.random.default_rng(seed)
    nxt = rng.integers(0, vocab, size=(vocab, 3))
    out = np.empty(n, dtype=np.int64)
    t = 1
    for i in range(n):
        t = nxt[t, rng.integers(0, 3)]
        out[i] = t
    return out


def markov_shards(root, vocab, n_train, n_valid, seed):
    """root/train.h5 and root/valid.h5: n_train then n_valid tokens of one markov_tokens
    stream; returns (train path, valid path, the tokens)."""
    toks = markov_tokens(n_train + n_valid, vocab, seed=seed)
    train, valid = os.path.join(root, "train.h5"), os.path.join(root, "valid.h5")
    write_shard(train, toks[:n_train], vocab)
    write_shard(valid, toks[n_train:], vocab)
    return train, valid, toks


def compress_job(root, base, seed, seq_len, compress, train, **sections):
    """root/job.yaml: a compress job of the model directory `base` on root/train.h5 and
    root/valid.h5 (markov_shards), run.dir a placeholder (each run sets its own with
    --set run.dir=...), the compress and train sections given, and any further sections
    (eval, checkpoint, backend, ...). Returns its path."""
    job = os.path.join(root, "job.yaml")
    write_yaml(job, dict({
        "run": {"dir": os.path.join(root, "unset"), "mode": "compress", "seed": seed},
        "model": {"base": base},
        "compress": compress,
        "data": {"train": [os.path.join(root, "train.h5")], "valid": [os.path.join(root, "valid.h5")],
                 "seq_len": seq_len},
        "train": train,
    }, **sections))
    return job


def sharded_job(root, **sections):
    """The compress job of the multi-rank tests: a tiny untied base (vocab 96, d 64, d_ff
    128, 2 layers) to 48/80 by magnitude, 6 steps of global batch 12 at seq_len 16 on the
    CPU, no checkpoints (sections given here override or add, e.g. output)."""
    bdir, _ = tiny_base(root, 4, 96, 64, 128, 2)
    markov_shards(root, 96, 5000, 1000, seed=2)
    return compress_job(
        root, bdir, 3, 16, {"d_model": 48, "d_ff": 80, "importance": "magnitude"},
        {"steps": 6, "global_batch": 12, "micro_batch": 1, "lr": 3e-3, "warmup_steps": 1},
        **dict({"eval": {"batches": 4}, "checkpoint": {"every_steps": 0}, "backend": {"device": "cpu"}}, **sections))


def two_way_job(root, layers, micro_batch=2, seq_len=16):
    """The job of the tests that run one compress two ways (a memory option on and off): a
    tiny untied base (vocab 96, d 64, d_ff 128, `layers` layers) to 48/80 by magnitude, 4
    steps of global batch 4, lr 3e-3, evaluated every 2 steps, on the CPU, no checkpoints."""
    bdir, _ = tiny_base(root, 4, 96, 64, 128, layers)
    markov_shards(root, 96, 5000, 1000, seed=2)
    return compress_job(
        root, bdir, 3, seq_len, {"d_model": 48, "d_ff": 80, "importance": "magnitude"},
        {"steps": 4, "global_batch": 4, "micro_batch": micro_batch, "lr": 3e-3, "warmup_steps": 1},
        eval={"batches": 2, "every_steps": 2}, checkpoint={"every_steps": 0}, backend={"device": "cpu"})


def memory_root(root):
    """root/big, made, for a test's peak-RSS comparison; None (and a line saying so) under a
    sanitizer (tests/sanitize.sh), whose shadow memory and quarantine are in the RSS."""
    if os.environ.get("PC_SANITIZER"):
        print(f"peak RSS not compared under {os.environ['PC_SANITIZER']}")
        return None
    big = os.path.join(root, "big")
    os.makedirs(big)
    return big


def memory_job(root, vocab, hidden, ff, layers, hidden_c, ff_c, seq_len, batch):
    """A one-step compress job on the CPU for measuring peak RSS: a base made by
    transformers' own init (scale 0) of the given shape to (hidden_c, ff_c) by magnitude,
    one micro-batch of `batch` x seq_len tokens, no checkpoints."""
    bdir, _ = tiny_base(root, 5, vocab, hidden, ff, layers, scale=0)
    markov_shards(root, vocab, 20000, 1000, seed=3)
    return compress_job(root, bdir, 3, seq_len, {"d_model": hidden_c, "d_ff": ff_c, "importance": "magnitude"},
                        {"steps": 1, "global_batch": batch, "micro_batch": batch}, checkpoint={"every_steps": 0},
                        backend={"device": "cpu"})


def rss_vs_plan(root, job, column, runs):
    """Peak RSS against the plan between two one-rank runs of a job: runs is two (name,
    --set values) pairs, each run under root; the peak RSS must change from the first to
    the second by what plan.txt's `column` (MiB) changes by, within 35%. Returns each
    run's (peak RSS, column) in MiB, for the caller's own checks on the plan."""
    out = []
    for name, sets in runs:
        d = run_job(root, job, name, 1, *sets)
        out.append((peak_rss(d)[0], plan_table(d)[0][column]))
        print(f"{name}: plan {column} {out[-1][1]:.1f} MiB, peak RSS {out[-1][0]:.1f} MiB")
    (ra, pa), (rb, pb) = out
    planned, measured = pb - pa, rb - ra
    check(abs(measured - planned) <= 0.35 * abs(planned),
          f"peak RSS from {runs[0][0]} to {runs[1][0]}: {measured:+.1f} MiB, the plan says {planned:+.1f} MiB")
    return out


def write_yaml(path, sections):
    """Write a two-level dict as a YAML job file."""
    with open(path, "w") as f:
        for sec, kv in sections.items():
            f.write(f"{sec}:\n")
            for k, v in kv.items():
                if isinstance(v, (list, tuple)):
                    v = "[" + ", ".join(str(x) for x in v) + "]"
                f.write(f"  {k}: {v}\n")


def hf_val_loss(model_dir, toks, seq, n_win, bf16=False):
    """Mean cross-entropy that stock transformers computes for the HF model in model_dir on
    n_win consecutive windows of seq tokens (targets shifted by one) of toks: the
    reference for projcompd's val_loss; with bf16, its products from bf16 operands
    (bf16_products)."""
    import contextlib
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM  # the class config.json names, as users load it
    m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad(), bf16_products() if bf16 else contextlib.nullcontext():
        return float(np.mean([torch.nn.functional.cross_entropy(
            m(torch.tensor(toks[i * seq:i * seq + seq])[None]).logits[0].double(),
            torch.tensor(toks[i * seq + 1:i * seq + seq + 1])).item() for i in range(n_win)]))


PLAN_COLUMNS = ["base", "state", "shared", "replica", "xchg", "scratch", "act", "grads", "total"]


def plan_table(run_dir):
    """plan.txt's rank table: one dict per rank, each PLAN_COLUMNS entry in MiB."""
    rows = []
    for line in open(os.path.join(run_dir, "plan.txt")):
        f = line.split()
        if len(f) == 3 + len(PLAN_COLUMNS) and line.startswith("  ") and f[0].isdigit():
            rows.append({k: float(v) * 1024 for k, v in zip(PLAN_COLUMNS, f[2:-1])})
    check(len(rows) > 0, f"{run_dir}/plan.txt has a rank table")
    return rows


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


def check_flops_metrics(run_dir, world, seq_len, global_batch, peak=None):
    """Each step's tflops and (with peak, each rank's backend.peak_tflops) mfu metric
    against FLOPs counted here: the final model's nn.Linear weights as transformers builds
    them, 6 FLOPs each a token, plus attention's 12 L H hd T, at the step's tokens_per_s;
    tflops adds the projection FLOPs a step of the log (compress), mfu does not. Without
    peak no step has an mfu."""
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(run_dir, "final"),
                                                              torch_dtype=torch.float32)
    cfg = model.config
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = 6.0 * linear + 12.0 * cfg.num_hidden_layers * cfg.num_attention_heads * hd * seq_len
    log = open(os.path.join(run_dir, "logs", "rank-00000.log")).read()
    m = re.search(r"([\d.e+]+) projection FLOPs per step", log)
    proj = float(m.group(1)) if m else 0.0  # printed to 3 digits
    steps = [s for s in metrics(run_dir) if "tflops" in s]
    check(len(steps) > 0, f"{run_dir}: steps with a tflops metric")
    for s in steps:
        tol = 1e-4 + 0.05 / s["tokens_per_s"]  # tokens_per_s is printed to 0.1
        model_tf = per_token * s["tokens_per_s"] / 1e12
        proj_tf = proj * s["tokens_per_s"] / (global_batch * seq_len) / 1e12
        err = abs(s["tflops"] - model_tf - proj_tf) / s["tflops"]
        check(err < (5e-3 if proj else tol),
              f"{run_dir} step {s['step']}: tflops {s['tflops']:.6g} = model {model_tf:.6g} + projections "
              f"{proj_tf:.3g} (rel err {err:.1e})")
        if peak is None:
            check("mfu" not in s, f"{run_dir} step {s['step']}: no mfu without backend.peak_tflops")
            continue
        want = model_tf / (world * peak)
        check(abs(s["mfu"] - want) <= tol * want,
              f"{run_dir} step {s['step']}: mfu {s['mfu']:.6g} = {model_tf:.6g} / ({world} x {peak}) = {want:.6g}")
    if peak is not None:
        check(f"mfu against {world * peak:.1f} TFLOP/s: {world} rank(s), this one {peak:.1f} (backend.peak_tflops)"
              in log, f"{run_dir}: the log names the peak")


# Runs argv[2:] and writes its peak RSS (KiB) to argv[1]. A fresh small process forks the
# command, because a child's peak RSS counts the process it was forked from: a test's
# own memory would hide the command's.
_RSS_SHIM = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_peak_rss(args, timeout=300):
    """Run a command; its CompletedProcess (text output) and its peak RSS in MiB."""
    with tempfile.NamedTemporaryFile() as rss:
        p = subprocess.run([sys.executable, "-c", _RSS_SHIM, rss.name, *[str(a) for a in args]], capture_output=True,
                           text=True, timeout=timeout)
        with open(rss.name) as f:
            return p, int(f.read() or 0) / 1024


def last_val_loss(run_dir):
    """The run's last validation loss in metrics.jsonl."""
    return [m["val_loss"] for m in metrics(run_dir) if "val_loss" in m][-1]


def memory_record(run_dir):
    """The run's last memory record: {"peak_rss_mib": [...], "peak_device_mib": [...]}, a value per rank."""
    return [m for m in metrics(run_dir) if "peak_rss_mib" in m][-1]


def peak_rss(run_dir):
    """Every rank's peak RSS (MiB) as the run recorded it last."""
    return memory_record(run_dir)["peak_rss_mib"]


def comm_mb(run_dir):
    """Each training step's comm_mb (array)."""
    import numpy as np
    return np.array([m["comm_mb"] for m in metrics(run_dir) if "loss" in m])


def run_outputs(d):
    """A finished run's loss and grad-norm curve, validation losses and output tensors."""
    from safetensors.numpy import load_file
    curve = [(m["step"], m["loss"], m["grad_norm"]) for m in metrics(d) if "loss" in m]
    evals = [(m["step"], m["val_loss"]) for m in metrics(d) if "val_loss" in m]
    return curve, evals, load_file(os.path.join(d, "final", "model.safetensors"))


def run_arrays(d):
    """A finished run's losses and grad norms (arrays), validation losses and output tensors."""
    import numpy as np
    from safetensors.numpy import load_file
    ms = metrics(d)
    return (np.array([m["loss"] for m in ms if "loss" in m]), np.array([m["grad_norm"] for m in ms if "loss" in m]),
            [m["val_loss"] for m in ms if "val_loss" in m], load_file(os.path.join(d, "final", "model.safetensors")))


def close_runs(a, b, tol_loss, tol_w, what):
    """run_arrays a against the reference b: every loss within tol_loss relative, grad norms
    within 10 x tol_loss, every output tensor within tol_w of its largest element."""
    import numpy as np
    rel = np.max(np.abs(a[0] - b[0]) / np.abs(b[0]))
    check(rel < tol_loss, f"{what}: losses agree (max rel {rel:.2e} < {tol_loss})")
    gn = np.max(np.abs(a[1] - b[1]) / np.abs(b[1]))
    check(gn < 10 * tol_loss, f"{what}: grad norms agree (max rel {gn:.2e})")
    w = max(np.max(np.abs(a[3][k] - b[3][k])) / np.max(np.abs(b[3][k])) for k in b[3])
    check(w < tol_w, f"{what}: fused weights agree (max rel {w:.2e} < {tol_w})")


def bf16_products():
    """A context in which every torch.nn.functional.linear (so every nn.Linear) takes its
    operands rounded to bf16 with fp32 accumulation, forward and backward (the backward's
    products from rounded operands too), and a Llama MLP's gate and up outputs are rounded
    to bf16 (their gradients passed through as they are), as is the gradient of its
    down_proj's input: what backend.matmul bf16 computes. Attention products stay fp32, as
    in projcompd."""
    import contextlib
    import torch
    import torch.nn.functional as F
    from transformers.models.llama import modeling_llama

    def r(t):
        return t.bfloat16().float()

    class Bf16Values(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return r(x)

        @staticmethod
        def backward(ctx, g):
            return g

    class Bf16Grad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x

        @staticmethod
        def backward(ctx, g):
            return r(g)

    def mlp_forward(self, x):
        gate, up = Bf16Values.apply(self.gate_proj(x)), Bf16Values.apply(self.up_proj(x))
        return self.down_proj(Bf16Grad.apply(self.act_fn(gate) * up))

    class Bf16Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return r(x) @ r(w).t()

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
            return r(g) @ r(w), r(g2).t() @ r(x2)

    @contextlib.contextmanager
    def patched():
        plain, plain_mlp = F.linear, modeling_llama.LlamaMLP.forward
        F.linear = lambda x, w, b=None: Bf16Linear.apply(x, w) if b is None else Bf16Linear.apply(x, w) + b
        modeling_llama.LlamaMLP.forward = mlp_forward
        try:
            yield
        finally:
            F.linear = plain
            modeling_llama.LlamaMLP.forward = plain_mlp
    return patched()


def same_tensors(a, b):
    """Two dicts of arrays (a model's tensors by name) hold the same names and values."""
    import numpy as np
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def same_outputs(a, b, what):
    """Two runs' run_outputs are bitwise equal."""
    ca, ea, wa = a
    cb, eb, wb = b
    check(len(ca) > 0 and ca == cb, f"{what}: loss and grad-norm curves bitwise equal ({len(ca)} steps)")
    check(ea == eb, f"{what}: validation losses bitwise equal ({len(ea)} evals)")
    check(same_tensors(wa, wb), f"{what}: output tensors bitwise equal ({len(wa)} tensors)")


def same_importance(a, b, what):
    """Two runs' importance.txt keep the same indices, with scores within 1e-5 relative
    (different backends sum in different orders)."""
    import numpy as np

    def read(d):
        kept, scores = {}, {}
        for line in open(os.path.join(d, "importance.txt")):
            if line.startswith("#"):
                continue
            name, *vals = line.split()
            (kept if name.endswith(".kept") else scores)[name] = vals
        return kept, scores

    (ka, sa), (kb, sb) = read(a), read(b)
    check(ka == kb and len(ka) > 0, f"{what}: the same kept indices ({len(ka)} sets)")
    rel = max(np.max(np.abs(np.array(sa[k], float) - np.array(sb[k], float)) / np.abs(np.array(sb[k], float)))
              for k in sb)
    check(sorted(sa) == sorted(sb) and rel < 1e-5, f"{what}: the same scores (max rel {rel:.1e})")


_tmpdirs = []
_failed = False


def _cleanup():
    if _failed or os.environ.get("PC_KEEP_TMP"):
        for d in _tmpdirs:
            print(f"kept {d}", file=sys.stderr)
        return
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)


def _excepthook(kind, value, tb, _default=sys.excepthook):
    global _failed
    _failed = True
    _default(kind, value, tb)


atexit.register(_cleanup)
sys.excepthook = _excepthook


def tmpdir(prefix):
    d = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PC_TMP"))
    _tmpdirs.append(d)
    return d


def fail(msg):
    """End the test with msg; its directories are kept."""
    global _failed
    _failed = True
    raise SystemExit(msg)


def check(cond, msg):
    if not cond:
        fail("FAIL: " + msg)
    print("ok:", msg)


MASK = (1 << 64) - 1


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return x, z ^ (z >> 31)


def hash64(a, b, c, d):
    """pc_hash64 of common/util.c."""
    _, h = _splitmix64(a & MASK)
    _, h = _splitmix64(h ^ (b & MASK))
    _, h = _splitmix64(h ^ (c & MASK))
    _, h = _splitmix64(h ^ (d & MASK))
    return h


def sample_offset(seed, step, sample, n_tokens, seq_len):
    """data_sample_offset of common/data.c: window start of a training sample."""
    h = hash64(seed, step, sample, 0x5A3D1E0F7C2B9486)
    return (h * (n_tokens - seq_len)) >> 64


def tiny_base(root, seed, vocab, hidden, ff, layers, heads=4, kv=2, head_dim=16, tied=False, scale=0.1,
              name="base", **extra):
    """A random LlamaForCausalLM made and saved (safetensors) by stock transformers in
    root/name; returns (directory, model). With scale > 0 the matrices are N(0, scale)
    and the norm gains U(0.5, 1.5), larger than transformers' init so that losses and
    gradients are far from trivial; scale 0 keeps its init."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=ff, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, tie_word_embeddings=tied,
               max_position_embeddings=64)
    cfg.update(extra)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    if scale > 0:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, scale) if p.dim() == 2 else p.uniform_(0.5, 1.5)
    path = os.path.join(root, name)
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def tiny_pretrain_inputs(root, vocab=64):
    """A one-layer model config.json and a token shard for quick pretrain jobs; returns
    (config path, shard path)."""
    import json
    shard = os.path.join(root, "train.h5")
    write_shard(shard, markov_tokens(4000, vocab, seed=1), vocab)
    mcfg = os.path.join(root, "model.json")
    with open(mcfg, "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": 32,
                   "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "num_key_value_heads": 2, "max_position_embeddings": 64}, f)
    return mcfg, shard


def tiny_pretrain_job(root, seq_len, steps, backend):
    """A pretrain job (job.yaml path) on tiny_pretrain_inputs: random init from the config,
    the shard for training and validation, global batch 4 of micro-batches of 2."""
    mcfg, shard = tiny_pretrain_inputs(root)
    job = os.path.join(root, "pretrain.yaml")
    write_yaml(job, {
        "run": {"dir": os.path.join(root, "unset"), "mode": "pretrain", "seed": 1},
        "model": {"config": mcfg},
        "data": {"train": [shard], "valid": [shard], "seq_len": seq_len},
        "train": {"steps": steps, "global_batch": 4, "micro_batch": 2, "lr": 1e-2, "warmup_steps": 1},
        "eval": {"batches": 2},
        "backend": backend,
    })
    return job


def tiny_stop_job(root):
    """A tiny one-rank CPU compress job (root/job.yaml: a tied GQA base, a Markov shard, no
    periodic checkpoint) for stopping and resuming the job scripts; with steps_lasting,
    as long as a test needs."""
    V, D, F, L, SEQ = 96, 32, 64, 2, 16
    bdir, _ = tiny_base(root, 7, V, D, F, L, head_dim=8, tied=True, scale=0)
    write_shard(os.path.join(root, "train.h5"), markov_tokens(5000, V, seed=3), V)
    job = os.path.join(root, "job.yaml")
    write_yaml(job, {
        "run": {"dir": os.path.join(root, "unset"), "mode": "compress", "seed": 4},
        "model": {"base": bdir},
        "compress": {"d_model": 24, "d_ff": 40, "importance": "magnitude"},
        "data": {"train": [os.path.join(root, "train.h5")], "seq_len": SEQ},
        "train": {"steps": 20, "global_batch": 4, "micro_batch": 1, "lr": 1e-3, "warmup_steps": 2},
        "checkpoint": {"every_steps": 0, "keep": 2},
        "backend": {"device": "cpu"},
    })
    return job


def steps_lasting(job, root, seconds, probe_steps, lo, hi):
    """(ms per step, train.steps in [lo, hi]) for the job to run about `seconds` on one
    rank, timed by a probe run of probe_steps (run.dir root/probe)."""
    t0 = time.time()
    projcompd(1, job, f"run.dir={root}/probe", f"train.steps={probe_steps}")
    per_step = (time.time() - t0) / probe_steps
    return per_step * 1e3, int(min(hi, max(lo, seconds / max(per_step, 1e-6))))

