"""bench_compress_gpu: Projected Compression of a Llama-3.2-1B-shaped model to 50%
(d_model 2048 -> 1344, d_ff 8192 -> 5376) on one device, a benchmark (not a test).

1. Makes a random base with transformers (LlamaForCausalLM from the model config, with
   optional overrides of layers and widths so that tiny shapes use the same code; random
   init in fp32, saved in bf16 safetensors) and a random token shard.
2. Runs projcompd on one rank: compress (two-pass, memory-efficient), compress with
   compress.store_grads, and prune (the plain small model: the dense baseline), same
   batch and steps, no validation data, no checkpoints.
3. Prints per run the median step time (the first --warmup steps skipped), tokens/s,
   the daemon's achieved TFLOP/s, MFU (dense FLOPs of the compressed model per second /
   --peak) and peak memory; then compress/prune step-time ratios beside the analytic
   bound 1 + projection FLOPs / dense FLOPs (tests/compress/bench_compress.py).
4. With --torch 1: the same compress step in PyTorch eager on the same device (the frozen
   base in --dtype, fp32 trainable tensors; --matmul tf32: TF32 matmuls, bf16: autocast to
   bf16, the projections' products included, as the daemon's follow backend.matmul), its
   tokens/s and peak memory, and projcompd/PyTorch. --attention (default bf16) sets the
   daemon's backend.attention (auto: each run chooses the kernels or cuDNN as it starts,
   and its backend line below the table gives the times and the choice); --dtype
   (default bf16, exact: the base is saved in bf16) its model.dtype.
5. Prints the commands it ran; exits 1 if any run failed.

On an H100 (989.4 = dense bf16 TFLOP/s of the SXM part):
  python tests/gpu/bench_compress_gpu.py --build build --device cuda
A tiny smoke run on a CPU:
  python tests/gpu/bench_compress_gpu.py --build build --device cpu --layers 2 --hidden 256 --ff 1024
      --heads 4 --kv 2 --hd 64 --vocab 1024 --dc 128 --ffc 512 --seq 64 --micro 2 --batch 4 --steps 4 --warmup 1
"""
import argparse
import glob
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "compress"))
import pclib  # noqa: E402
from bench_compress import proj_flops  # noqa: E402

RUNS = [("prune", "prune (dense baseline)", []),
        ("compress", "compress (two-pass)", ["compress.store_grads=false"]),
        ("compress-stored", "compress (store_grads)", ["compress.store_grads=true"])]


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("PC_BUILD", "build"))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--config", default=os.path.join(HERE, "..", "..", "configs", "models", "llama-3.2-1b",
                                                     "config.json"))
    for k in ["layers", "hidden", "ff", "heads", "kv", "hd", "vocab"]:
        ap.add_argument("--" + k, type=int, default=None, help="override of the config (default: its value)")
    for k, v in dict(dc=1344, ffc=5376, seq=2048, micro=4, batch=8, steps=8, warmup=2, torch=1,
                     threads=0, timeout=3600).items():
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--matmul", default="bf16", choices=["fp32", "tf32", "bf16"],
                    help="backend.matmul of the daemon (and the PyTorch equivalent)")
    ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16"],
                    help="model.dtype of the daemon: the frozen base held in bf16 (the PyTorch side likewise) or f32")
    ap.add_argument("--attention", default="bf16", choices=["fp32", "bf16", "cudnn", "auto"],
                    help="backend.attention of the daemon (PyTorch's attention runs under the same autocast)")
    ap.add_argument("--peak", type=float, default=989.4, help="device's dense bf16 TFLOP/s (989.4: H100 SXM)")
    ap.add_argument("--keep", default=None, help="directory for the base, shard and runs, reused between runs")
    a = ap.parse_args()
    with open(a.config) as f:
        a.cfg = json.load(f)
    c = a.cfg
    a.layers = a.layers or c["num_hidden_layers"]
    a.hidden = a.hidden or c["hidden_size"]
    a.ff = a.ff or c["intermediate_size"]
    a.heads = a.heads or c["num_attention_heads"]
    a.kv = a.kv or c.get("num_key_value_heads", a.heads)
    a.hd = a.hd or c.get("head_dim") or a.hidden // a.heads
    a.vocab = a.vocab or c["vocab_size"]
    if a.steps <= a.warmup:
        ap.error("--steps must exceed --warmup")
    if a.batch % a.micro:
        ap.error("--batch must be a multiple of --micro")
    return a


def base_config(a):
    """The config of the random base: the file's, with the overrides."""
    c = dict(a.cfg)
    c.update(num_hidden_layers=a.layers, hidden_size=a.hidden, intermediate_size=a.ff, num_attention_heads=a.heads,
             num_key_value_heads=a.kv, head_dim=a.hd, vocab_size=a.vocab)
    for k in ["bos_token_id", "eos_token_id"]:
        if isinstance(c.get(k), int) and c[k] >= a.vocab:
            c[k] = 0
    return c


def make_inputs(a, root):
    """Random base (root/base) and token shard (root/train.h5); reused when root/inputs.json
    says they were made for the same shape."""
    want = {"config": base_config(a), "seq": a.seq, "batch": a.batch}
    stamp = os.path.join(root, "inputs.json")
    bdir, shard = os.path.join(root, "base"), os.path.join(root, "train.h5")
    if os.path.exists(stamp) and json.load(open(stamp)) == want:
        print(f"reusing base and shard in {root}")
        return bdir, shard
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    t0 = time.time()
    torch.manual_seed(0)
    cfg = {k: v for k, v in want["config"].items() if k not in ("architectures", "model_type", "torch_dtype")}
    model = LlamaForCausalLM(LlamaConfig(**cfg))  # random init, fp32
    shutil.rmtree(bdir, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(bdir, safe_serialization=True)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    n = max(1 << 16, 4 * a.batch * (a.seq + 1))
    toks = np.random.default_rng(1).integers(0, a.vocab, size=n)
    pclib.write_shard(shard, toks, a.vocab, dtype="uint16" if a.vocab <= 65535 else "uint32")
    json.dump(want, open(stamp, "w"))
    print(f"made base ({n_params / 1e6:.1f}M parameters, bf16) and shard ({n} tokens) in {time.time() - t0:.0f} s")
    return bdir, shard


def write_job(a, root, bdir, shard):
    job = os.path.join(root, "job.yaml")
    pclib.write_yaml(job, {
        "run": {"dir": os.path.join(root, "runs", "unset"), "mode": "compress"},
        "model": {"base": bdir, "dtype": a.dtype},
        "compress": {"d_model": a.dc, "d_ff": a.ffc, "importance": "magnitude"},
        "data": {"train": [shard], "seq_len": a.seq},
        "train": {"steps": a.steps, "global_batch": a.batch, "micro_batch": a.micro, "warmup_steps": 1},
        "checkpoint": {"every_steps": 0, "keep": 1, "at_end": False},  # none: 39 GB at the default shape
        "backend": {"device": a.device, "matmul": a.matmul, "attention": a.attention, "threads": a.threads},
    })
    return job


def dense_flops(a):
    """Forward+backward FLOPs of one step of the compressed model: 6 x parameters in matrix
    products (the head counted, the embedding lookup not) x tokens, plus attention
    12 x layers x heads x head_dim x T per token (llama_flops_per_token in worker/llama.c)."""
    n_c = a.layers * (a.dc * a.heads * a.hd * 2 + 2 * a.dc * a.kv * a.hd + 3 * a.dc * a.ffc) + a.vocab * a.dc
    tokens = a.batch * a.seq
    return 6 * n_c * tokens + 12 * a.layers * a.heads * a.hd * a.seq * tokens


def run_daemon(a, job, root, mode, extra, commands):
    """One projcompd run; returns a result dict (None values where it failed)."""
    d = os.path.join(root, "runs", mode)
    shutil.rmtree(d, ignore_errors=True)
    args = ["mpirun", "--oversubscribe", "-np", "1", os.path.join(a.build, "daemon", "projcompd"), "--cfg", job]
    for s in [f"run.dir={d}", f"run.mode={mode.split('-')[0]}", f"backend.peak_tflops={a.peak}"] + extra:
        args += ["--set", s]
    commands.append(shlex.join(args))
    t0 = time.time()
    try:
        p = pclib.run(args, check=False, timeout=a.timeout)
        rc, err = p.returncode, p.stdout + p.stderr
    except Exception as ex:  # subprocess.TimeoutExpired
        rc, err = -1, str(ex)
    res = {"ok": rc == 0, "wall": time.time() - t0}
    if rc != 0:
        sys.stderr.write(f"{mode}: projcompd failed ({rc}):\n{err[-4000:]}\n")
        return res
    ms = pclib.metrics(d)
    steps = [m for m in ms if "step_time" in m][a.warmup:]
    mem = [m for m in ms if "peak_rss_mib" in m]
    res.update(step=statistics.median(m["step_time"] for m in steps),
               losses=[m["loss"] for m in ms if "step_time" in m],
               tflops=statistics.median(m["tflops"] for m in steps),
               mfu=statistics.median(m["mfu"] for m in steps) if steps and "mfu" in steps[0] else None,
               rss=mem[-1]["peak_rss_mib"][0] if mem else None,
               dev=(mem[-1].get("peak_device_mib") or [0])[0] if mem else None)
    log = open(os.path.join(d, "logs", "rank-00000.log")).read()
    m = re.search(r"\] (backend [^\n]*)", log) or re.search(r"(backend [^\n]*)", log)
    res["backend"] = m.group(1).strip() if m else "?"
    m = re.search(r"(attention auto: [^\n]*)", log)  # auto's choice, with bf16 products (daemon/attn_auto.c)
    if m:
        res["backend"] += "; " + m.group(1)
    m = re.search(r"([0-9.e+]+) projection FLOPs per step", log)
    res["daemon_proj_flops"] = float(m.group(1)) if m else None
    return res


def torch_compress(a, bdir, shard):
    """The compress step in PyTorch eager: frozen fp32 base W, trainable P_in/P_out/A per
    matrix (docs/guide.md, Concepts), W_C = P_out W P_in + A materialised once per step
    inside autograd, micro-batches of the small LlamaForCausalLM (functional_call with the W_C) accumulate
    dL/dW_C, one backward through the materialisation, clip 1.0, AdamW."""
    import h5py
    import numpy as np
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM
    try:
        from torch.func import functional_call
    except ImportError:  # torch < 2.0
        from torch.nn.utils.stateless import functional_call
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = a.matmul == "tf32"
        torch.backends.cudnn.allow_tf32 = a.matmul == "tf32"
        torch.cuda.reset_peak_memory_stats(dev)
    elif a.threads:
        torch.set_num_threads(a.threads)
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)

    W = {}
    for f in sorted(glob.glob(os.path.join(bdir, "*.safetensors"))):
        dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
        W.update({k: v.to(dev, dtype) for k, v in load_file(f).items()})
    E = W["model.embed_tokens.weight"]  # (V, d)
    head = W.get("lm_head.weight", E)  # tied base: the same frozen E, its own projections

    g = torch.Generator().manual_seed(0)
    keep_d = torch.randperm(a.hidden, generator=g)[:a.dc].sort().values  # kept d_model indices

    def p_in(n, idx):  # (n, k) one-hot: P_in[idx[j], j] = 1
        p = torch.zeros(n, len(idx))
        p[idx, torch.arange(len(idx))] = 1
        return p.to(dev).requires_grad_()

    def p_out(idx, n):  # (k, n) one-hot: P_out[j, idx[j]] = 1
        return p_in(n, idx).detach().t().contiguous().requires_grad_()

    def zeros(*shape):
        return torch.zeros(*shape, device=dev, requires_grad=True)

    # name in the small model -> (W, P_in or None, P_out or None, A)
    spec = {"model.embed_tokens.weight": (E, p_in(a.hidden, keep_d), None, zeros(a.vocab, a.dc)),
            "lm_head.weight": (head, p_in(a.hidden, keep_d), None, zeros(a.vocab, a.dc))}
    norms = {"model.norm.weight": W["model.norm.weight"][keep_d.to(dev)].float().requires_grad_()}
    qd, kvd = a.heads * a.hd, a.kv * a.hd
    for i in range(a.layers):
        pre = f"model.layers.{i}."
        keep_f = torch.randperm(a.ff, generator=g)[:a.ffc].sort().values
        for n, o in [("self_attn.q_proj", qd), ("self_attn.k_proj", kvd), ("self_attn.v_proj", kvd)]:
            spec[pre + n + ".weight"] = (W[pre + n + ".weight"], p_in(a.hidden, keep_d), None, zeros(o, a.dc))
        spec[pre + "self_attn.o_proj.weight"] = (W[pre + "self_attn.o_proj.weight"], None,
                                                 p_out(keep_d, a.hidden), zeros(a.dc, qd))
        for n in ["mlp.gate_proj", "mlp.up_proj"]:
            spec[pre + n + ".weight"] = (W[pre + n + ".weight"], p_in(a.hidden, keep_d), p_out(keep_f, a.ff),
                                         zeros(a.ffc, a.dc))
        spec[pre + "mlp.down_proj.weight"] = (W[pre + "mlp.down_proj.weight"], p_in(a.ff, keep_f),
                                              p_out(keep_d, a.hidden), zeros(a.dc, a.ffc))
        for n in ["input_layernorm", "post_attention_layernorm"]:
            norms[pre + n + ".weight"] = W[pre + n + ".weight"][keep_d.to(dev)].float().requires_grad_()
    trainable = [t for s in spec.values() for t in s[1:] if t is not None] + list(norms.values())
    n_train = sum(t.numel() for t in trainable)

    def materialise(w, pi, po, A):  # (d_out, d_in) -> (d_out', d_in'), the cheaper order
        w = w if a.matmul == "bf16" else w.float()  # a bf16 base: autocast's bf16 products take it as it is
        if pi is not None and po is not None:
            o, dO = po.shape
            dI, i = pi.shape
            m = po @ (w @ pi) if dO * dI * i + o * dO * i <= o * dO * dI + o * dI * i else (po @ w) @ pi
        else:
            m = w @ pi if pi is not None else po @ w
        return m + A

    c = base_config(a)
    c = {k: v for k, v in c.items() if k not in ("architectures", "model_type", "torch_dtype")}
    c.update(hidden_size=a.dc, intermediate_size=a.ffc, tie_word_embeddings=False, use_cache=False)
    small = LlamaForCausalLM(LlamaConfig(**c))
    for mod in small.modules():  # the weights come from functional_call; only buffers live here
        for n, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[n] = torch.nn.Parameter(torch.empty(0), requires_grad=False)
    small.to(dev).train()

    kw = dict(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    try:
        opt = torch.optim.AdamW(trainable, fused=True, **kw) if cuda else torch.optim.AdamW(trainable, **kw)
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(trainable, **kw)

    with h5py.File(shard, "r") as f:
        toks = np.asarray(f["tokens"][:], dtype=np.int64)
    rng = np.random.default_rng(2)
    n_micro = a.batch // a.micro

    def step(s):
        starts = rng.integers(0, len(toks) - a.seq - 1, size=a.batch)
        batch = torch.from_numpy(np.stack([toks[o:o + a.seq + 1] for o in starts])).to(dev)  # (batch, T+1)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.matmul == "bf16"):
            wc = {n: materialise(*s_) for n, s_ in spec.items()}  # inside autograd
        leaves = {n: w.detach().requires_grad_() for n, w in wc.items()}  # dL/dW_C accumulates here
        params = dict(leaves, **norms)
        loss_sum = 0.0
        for mb in range(n_micro):
            x = batch[mb * a.micro:(mb + 1) * a.micro]  # (micro, T+1)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.matmul == "bf16"):
                logits = functional_call(small, params, (x[:, :-1],)).logits  # (micro, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, a.vocab), x[:, 1:].reshape(-1)) / n_micro
            loss.backward()
            loss_sum += loss.detach()
        names = list(wc)
        torch.autograd.backward([wc[n] for n in names], [leaves[n].grad for n in names])
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        return float(loss_sum)

    times, losses = [], []
    for s in range(a.steps):
        sync()
        t0 = time.perf_counter()
        losses.append(step(s))
        sync()
        times.append(time.perf_counter() - t0)
    res = {"ok": True, "step": statistics.median(times[a.warmup:]), "n_train": n_train, "losses": losses,
           "dev": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None,
           "backend": f"PyTorch {torch.__version__} eager, {dev}" + (f", matmul {a.matmul}" if cuda else "")}
    return res


def fmt(x, spec, none="n/a"):
    return none if not x else format(x, spec)


def row(a, dense, proj, mode, label, r):
    """The table's line of one run's result r."""
    if not r.get("ok"):
        why = "out of memory" if "out of memory" in r.get("error", "").lower() else "FAILED"
        return f"{label:<26} {why:>9}   peak dev MiB {fmt(r.get('dev'), '.0f')}"
    tf = r.get("tflops", (dense + proj) / r["step"] / 1e12 if mode == "torch" else None)
    mfu = dense / r["step"] / 1e12 / a.peak
    return (f"{label:<26} {r['step']:>9.4f} {a.batch * a.seq / r['step']:>10.0f} {fmt(tf, '8.3f'):>8} {mfu:>7.2%} "
            f"{fmt(r.get('dev'), '.0f'):>13} {fmt(r.get('rss'), '.0f'):>13} "
            f"{r['losses'][0]:>7.4f}/{r['losses'][-1]:.4f}")


def main():
    a = parse()
    pclib.BUILD = a.build
    root = os.path.abspath(a.keep) if a.keep else pclib.tmpdir("pc-bench-gpu-")
    os.makedirs(root, exist_ok=True)
    commands = [shlex.join([sys.executable] + sys.argv)]
    bdir, shard = make_inputs(a, root)
    job = write_job(a, root, bdir, shard)
    dense = dense_flops(a)
    proj = proj_flops(a.hidden, a.ff, a.layers, a.dc, a.ffc, a.vocab, a.heads, a.kv, a.hd)
    bound = 1 + proj / dense

    res = {}
    for mode, label, extra in RUNS:
        res[mode] = run_daemon(a, job, root, mode, extra, commands)
        print("done:", row(a, dense, proj, mode, label, res[mode]), flush=True)  # kept if a later run is cut off
    if a.torch:
        commands.append(f"(in this process) PyTorch eager compress step on {a.device}, {a.steps} steps")
        try:
            res["torch"] = torch_compress(a, bdir, shard)
        except Exception as ex:  # out of memory included: reported, the run counts as failed
            import torch
            peak = torch.cuda.max_memory_allocated() / 2**20 if a.device == "cuda" else None
            res["torch"] = {"ok": False, "dev": peak, "error": f"{type(ex).__name__}: {str(ex)[:300]}"}
            sys.stderr.write(f"PyTorch run failed: {res['torch']['error']}\n")
        print("done:", row(a, dense, proj, "torch", "PyTorch eager compress", res["torch"]), flush=True)

    print()
    print(f"base: d {a.hidden}, d_ff {a.ff}, {a.layers} layers, {a.heads}/{a.kv} heads x {a.hd}, vocab {a.vocab} -> "
          f"d' {a.dc}, d_ff' {a.ffc}; global batch {a.batch} x {a.seq} tokens (micro-batch {a.micro}), "
          f"{a.steps} steps, median of the last {a.steps - a.warmup}; device {a.device}, matmul {a.matmul}, "
          f"attention {a.attention}")
    for k, v in res.items():
        if v.get("backend"):
            print(f"  {k}: {v['backend']}")
    if "torch" in res and res["torch"].get("n_train"):
        print(f"  trainable parameters (PyTorch side): {res['torch']['n_train'] / 1e6:.1f}M")
    print(f"dense FLOPs per step {dense:.4g}; projection FLOPs per step {proj:.4g} (analytic), "
          f"{fmt(res['compress'].get('daemon_proj_flops'), '.4g')} (projcompd's count); MFU peak {a.peak} TFLOP/s")
    print("projcompd's own mfu metric (median; the table's MFU counts the same FLOPs here): " +
          ", ".join(f"{mode} {fmt(res[mode].get('mfu'), '.2%')}" for mode, _, _ in RUNS))
    print()
    hdr = (f"{'run':<26} {'step s':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>7} {'peak dev MiB':>13} "
           f"{'peak RSS MiB':>13} {'loss first/last':>16}")
    print(hdr)
    print("-" * len(hdr))
    rows = [(mode, label) for mode, label, _ in RUNS] + ([("torch", "PyTorch eager compress")] if a.torch else [])
    for mode, label in rows:
        print(row(a, dense, proj, mode, label, res[mode]))
    print()
    print(f"analytic bound 1 + proj/dense = 1 + {proj:.4g}/{dense:.4g} = {bound:.4f}")
    if res["prune"]["ok"]:
        for mode, label, _ in RUNS[1:]:
            if res[mode]["ok"]:
                ratio = res[mode]["step"] / res["prune"]["step"]
                print(f"{label:<26} / prune step time {ratio:.4f}  (bound {bound:.4f}; overhead / analytic overhead "
                      f"{(ratio - 1) / (bound - 1):.2f})")
    if a.torch and res["torch"]["ok"]:
        for mode, label, _ in RUNS[1:]:
            if res[mode]["ok"]:
                print(f"{label:<26} / PyTorch eager tokens/s {res['torch']['step'] / res[mode]['step']:.3f}")
    print()
    print("commands (mpirun runs with OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
          "OMPI_MCA_btl=self,vader OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1):")
    for c in commands:
        print("  " + c)
    print(f"inputs and runs in {root}" + ("" if a.keep else " (removed)"))
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if all(r.get("ok") for r in res.values()) else 1)


if __name__ == "__main__":
    main()
