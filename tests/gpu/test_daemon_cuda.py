"""The daemon on a GPU against the CPU backend (skips, exit 77, without a CUDA device).

- compress and prune of a tiny GQA base made by transformers, 6 steps, backend.device
  cuda in plain fp32 (backend.matmul fp32) vs cpu: every step's loss within 1e-4
  relative, grad norms within 1e-3, the fused weights within 1e-4 of their max; with
  TF32 the first loss within 1e-3 and the last within 1e-2; with bf16 products against
  the CPU backend's bf16 emulation (the same rounded inputs): first loss within 1e-4,
  last within 1e-2, and the GPU's bf16 run differs from its fp32 run; with attention on
  bf16 tensor cores (backend.attention) against the CPU's fp32: first loss within 1e-2,
  last within 2e-2 (these runs use magnitude importance, so that both sides keep the same
  indices); the same with attention by cuDNN (backend.attention cudnn; where cuDNN cannot
  run, the rank's reason is printed and nothing checked); backend.attention auto with
  bf16 products logs its probe's choice, and runs bit for bit the bf16 attention run on
  the kernels, within 1e-2 / 2e-2 of it on cuDNN.
- the compress job with bf16 products and attention run twice on the GPU: losses, grad
  norms, validation losses and fused tensors bit for bit the same; stopped after step 3
  (its checkpoint) and resumed by the same command, bit for bit the uninterrupted run.
- store_grads + distillation and activation importance on the GPU: the same kept
  indices (importance.txt) as on the CPU; the same again with activation checkpointing
  on the GPU side. Distillation from a bf16 teacher (model.dtype bf16) against the CPU
  backend's emulation of its bf16 products: first loss within 1e-4, last within 1e-2.
- the fused model written by the GPU run loads in stock transformers and gives the
  daemon's validation loss (2e-5 relative).
- compress.shard_grads on the GPU (2 backwards per step, G through the stage windows)
  equals the whole-G GPU run: losses within 1e-5, fused weights within 1e-4.
- compress.store_grads: auto keeps the gradients of every block with projections on the
  GPU (the log says so), and the update recomputing them (false) gives the same run
  within 1e-6.
- with two or more GPUs: the compress job on 2 ranks over NCCL, split blocks, equals the
  1-rank GPU run within 1e-4 and names NCCL in the log, with the whole G and sharded.
- the demo: configs/demo-compress.yaml on a base of the demo model's shape
  (configs/demo-model.json, random, made by transformers), 60 steps on the GPU with
  bf16 products: the first loss (a forward at the initial weights) equals the CPU
  backend's bf16 emulation within 1e-3, and the loss falls by more than 0.5 (5.72 ->
  3.15 on the CPU backend)."""
import os
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

V, D, F, L, DC, FC, SEQ = 128, 128, 256, 2, 96, 192, 32


def gpus():
    p = subprocess.run([os.path.join(pclib.BUILD, "tests", "e2e", "gpu-smoke")], stdout=subprocess.PIPE, text=True)
    return 0 if p.returncode == 77 else p.stdout.count("device ")


def demo(root):
    import json
    with open(os.path.join(pclib.SRC, "configs", "demo-model.json")) as f:
        dm = json.load(f)
    ddir, _ = pclib.tiny_base(root, 8, dm["vocab_size"], dm["hidden_size"], dm["intermediate_size"],
                              dm["num_hidden_layers"], heads=dm["num_attention_heads"],
                              kv=dm["num_key_value_heads"], head_dim=dm["head_dim"], name="demo-base",
                              max_position_embeddings=dm["max_position_embeddings"])
    sub = os.path.join(root, "demo-data")
    os.makedirs(sub)
    train, valid, _ = pclib.markov_shards(sub, dm["vocab_size"], 60000, 6000, seed=9)
    cfg = os.path.join(pclib.SRC, "configs", "demo-compress.yaml")
    sets = [f"model.base={ddir}", f"data.train=[{train}]", f"data.valid=[{valid}]", "checkpoint.every_steps=0",
            "compress.importance=magnitude"]  # the same indices whatever the products' rounding
    first = {}
    for dev, steps in [("cpu", 1), ("cuda", 60)]:
        d = os.path.join(root, f"demo-{dev}")
        pclib.projcompd(1, cfg, f"run.dir={d}", f"backend.device={dev}", f"train.steps={steps}",
                        "backend.matmul=bf16", *sets)
        losses = [m["loss"] for m in pclib.metrics(d) if "loss" in m]
        first[dev] = losses[0]
        if dev == "cuda":
            pclib.check(losses[-1] < losses[0] - 0.5, f"demo on the GPU: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    r = abs(first["cuda"] - first["cpu"]) / first["cpu"]
    pclib.check(r < 1e-3, f"demo: first loss on the GPU {first['cuda']:.5f} vs CPU {first['cpu']:.5f} ({r:.1e})")


def resume_bitwise(run, sets, what):
    """The job (6 steps) stopped after step 3 with its checkpoint and run again by the same
    command with its 6 steps: it resumes after step 3, and its losses, grad norms and fused
    tensors are bit for bit those of the uninterrupted run. The lr is held after warm-up
    (train.min_lr_ratio 1), so that the 3-step run's schedule is the 6-step run's."""
    sets = list(sets) + ["train.min_lr_ratio=1"]
    whole = run("resume-whole", 1, *sets)
    run("resume-part", 1, *sets, "train.steps=3", "checkpoint.at_end=true")
    part = run("resume-part", 1, *sets)
    log = open(os.path.join(part, "logs", "rank-00000.log")).read()
    pclib.check("resumed after step 3" in log, f"{what}: the 6-step command resumes after step 3")
    (cr, _, wr), (cu, _, wu) = pclib.run_outputs(part), pclib.run_outputs(whole)
    a, b = ({s: (loss, gn) for s, loss, gn in c} for c in (cr, cu))  # the last row of each step
    pclib.check(sorted(a) == list(range(1, 7)) and a == b,
                f"{what}: stopped after step 3 and resumed, the losses and grad norms of steps 1-6 are the "
                f"uninterrupted run's, bit for bit ({a} vs {b})")
    pclib.check(pclib.same_tensors(wr, wu),
                f"{what}: resumed, the fused tensors are the uninterrupted run's, bit for bit ({len(wu)} tensors)")


def main():
    n = gpus()
    if n == 0:
        print("no CUDA device: skipping")
        sys.exit(77)
    root = pclib.tmpdir("pc-gpu-daemon-")
    bdir, _ = pclib.tiny_base(root, 5, V, D, F, L, heads=4, kv=2, head_dim=32)
    _, _, toks = pclib.markov_shards(root, V, 10000, 2000, seed=3)
    job = pclib.compress_job(
        root, bdir, 3, SEQ,
        {"d_model": DC, "d_ff": FC, "importance": "activation", "calibration_sequences": 16},
        {"steps": 6, "global_batch": 8, "micro_batch": 4, "lr": 3e-3, "warmup_steps": 1},
        eval={"batches": 2}, checkpoint={"every_steps": 0}, backend={"threads": 1})

    def run(name, np_, *sets):
        d = os.path.join(root, name)
        pclib.projcompd(np_, job, f"run.dir={d}", *sets)
        return d

    for mode in ["compress", "prune"]:
        cpu = run(f"{mode}-cpu", 1, f"run.mode={mode}", "backend.device=cpu")
        gpu = run(f"{mode}-cuda", 1, f"run.mode={mode}", "backend.device=cuda", "backend.matmul=fp32")
        pclib.check("backend cuda on GPU 0" in open(os.path.join(gpu, "logs", "rank-00000.log")).read(),
                    f"{mode}: ran on the CUDA backend")
        # the mfu metric's peak: by the GPU's name where it is known (daemon/mfu.c), and said so
        log = open(os.path.join(gpu, "logs", "rank-00000.log")).read()
        m = re.search(r"(mfu against .*|no mfu metric: GPU 0 .*)", log)
        pclib.check(m is not None, f"{mode}: the log says the mfu metric's peak or why there is none")
        print(m.group(1))
        with_mfu = [s for s in pclib.metrics(gpu) if "mfu" in s]
        pclib.check(len(with_mfu) == (6 if m.group(1).startswith("mfu against") else 0),
                    f"{mode}: an mfu metric on every step exactly when the peak is known ({len(with_mfu)} of 6)")
        pclib.same_importance(gpu, cpu, f"{mode}: activation importance on GPU and CPU")
        pclib.close_runs(pclib.run_arrays(gpu), pclib.run_arrays(cpu), 1e-4, 1e-4, f"{mode} fp32 GPU vs CPU")
        peak = [m["peak_device_mib"] for m in pclib.metrics(gpu) if "peak_device_mib" in m]
        pclib.check(len(peak) == 1 and peak[0][0] > 0, f"{mode}: peak device memory recorded ({peak} MiB)")
        # lower-precision products can reorder near-tied activation scores: the same
        # (magnitude) indices on both sides, so that only the arithmetic differs
        mag = "compress.importance=magnitude"
        cpu_m = pclib.run_arrays(run(f"{mode}-cpu-mag", 1, f"run.mode={mode}", "backend.device=cpu", mag))
        tf = run(f"{mode}-tf32", 1, f"run.mode={mode}", "backend.device=cuda", "backend.matmul=tf32", mag)
        a, b = pclib.run_arrays(tf), cpu_m
        r0, r1 = abs(a[0][0] - b[0][0]) / b[0][0], abs(a[0][-1] - b[0][-1]) / b[0][-1]
        pclib.check(r0 < 1e-3 and r1 < 1e-2, f"{mode} TF32 GPU vs CPU: first loss rel {r0:.2e}, last {r1:.2e}")
        g16 = pclib.run_arrays(run(f"{mode}-bf16", 1, f"run.mode={mode}", "backend.device=cuda", "backend.matmul=bf16",
                                       "backend.attention=fp32", mag))
        c16 = pclib.run_arrays(run(f"{mode}-cpu-bf16", 1, f"run.mode={mode}", "backend.device=cpu", "backend.matmul=bf16", mag))
        r0, r1 = abs(g16[0][0] - c16[0][0]) / c16[0][0], abs(g16[0][-1] - c16[0][-1]) / c16[0][-1]
        pclib.check(r0 < 1e-4 and r1 < 1e-2, f"{mode} bf16 GPU vs CPU emulation: first loss rel {r0:.2e}, last {r1:.2e}")
        g32 = pclib.run_arrays(run(f"{mode}-fp32-mag", 1, f"run.mode={mode}", "backend.device=cuda", "backend.matmul=fp32", mag))
        pclib.check(not np.array_equal(g16[0], g32[0]), f"{mode}: bf16 products change the GPU run")
        ga = pclib.run_arrays(run(f"{mode}-attn-bf16", 1, f"run.mode={mode}", "backend.device=cuda", "backend.matmul=fp32",
                        "backend.attention=bf16", mag))
        r0, r1 = abs(ga[0][0] - cpu_m[0][0]) / cpu_m[0][0], abs(ga[0][-1] - cpu_m[0][-1]) / cpu_m[0][-1]
        pclib.check(r0 < 1e-2 and r1 < 2e-2 and not np.array_equal(ga[0], g32[0]),
                    f"{mode} bf16 tensor-core attention vs CPU fp32: first loss rel {r0:.2e}, last {r1:.2e}")
        # the same by cuDNN's attention, where cuDNN can run (else the rank says why)
        d = os.path.join(root, f"{mode}-attn-cudnn")
        p = pclib.projcompd(1, job, f"run.dir={d}", f"run.mode={mode}", "backend.device=cuda",
                            "backend.matmul=fp32", "backend.attention=cudnn", mag, check=False)
        if p.returncode != 0 and "cannot run cuDNN's attention" in p.stderr + p.stdout:
            print(f"{mode}: cuDNN attention not tested: {(p.stderr + p.stdout).strip().splitlines()[-1]}")
        else:
            pclib.check(p.returncode == 0, f"{mode} cuDNN attention run exits 0 ({p.returncode})")
            gd = pclib.run_arrays(d)
            r0, r1 = abs(gd[0][0] - cpu_m[0][0]) / cpu_m[0][0], abs(gd[0][-1] - cpu_m[0][-1]) / cpu_m[0][-1]
            pclib.check(r0 < 1e-2 and r1 < 2e-2 and "attention bf16 by cuDNN" in
                        open(os.path.join(d, "logs", "rank-00000.log")).read(),
                        f"{mode} cuDNN attention vs CPU fp32: first loss rel {r0:.2e}, last {r1:.2e}")

    # the job files' modes (bf16 products and attention) twice: the same bits, since no
    # kernel's result depends on the order its blocks run in
    sets = ["backend.device=cuda", "backend.matmul=bf16", "backend.attention=bf16"]
    pclib.same_outputs(pclib.run_outputs(run("compress-bf16-again", 1, *sets)),
                       pclib.run_outputs(run("compress-bf16-first", 1, *sets)), "bf16 GPU compress run twice")
    resume_bitwise(run, sets, "bf16 GPU compress")
    # backend.attention auto (daemon/attn_auto.c): the rank logs its probe's outcome; on
    # projcompd's kernels the run is the bf16 attention run bit for bit, on cuDNN's within
    # bf16 attention's tolerance of it
    d = run("compress-bf16-auto", 1, "backend.device=cuda", "backend.matmul=bf16")
    log = open(os.path.join(d, "logs", "rank-00000.log")).read()
    m = re.search(r"attention auto: .*", log)
    pclib.check(m is not None, f"backend.attention auto: the choice logged ({m.group(0) if m else 'nothing'})")
    print(m.group(0))
    first = pclib.run_outputs(os.path.join(root, "compress-bf16-first"))
    if "using cuDNN's attention" in log:
        a, b = pclib.run_arrays(d), pclib.run_arrays(os.path.join(root, "compress-bf16-first"))
        r0, r1 = abs(a[0][0] - b[0][0]) / b[0][0], abs(a[0][-1] - b[0][-1]) / b[0][-1]
        pclib.check(r0 < 1e-2 and r1 < 2e-2 and "attention bf16 by cuDNN" in log,
                    f"auto took cuDNN: vs the kernels' run first loss rel {r0:.2e}, last {r1:.2e}")
    else:
        pclib.same_outputs(pclib.run_outputs(d), first, "auto took the kernels: the bf16 attention run")

    sets = ["compress.store_grads=true", "distill.enabled=true"]
    a = pclib.run_arrays(run("sd-cpu", 1, "backend.device=cpu", *sets))
    b = pclib.run_arrays(run("sd-cuda", 1, "backend.device=cuda", "backend.matmul=fp32", *sets))
    pclib.close_runs(b, a, 1e-4, 1e-4, "store_grads + distill fp32 GPU vs CPU")
    b = pclib.run_arrays(run("sd-cuda-rc", 1, "backend.device=cuda", "backend.matmul=fp32", "train.activation_checkpointing=true",
                   *sets))
    pclib.close_runs(b, a, 1e-4, 1e-4, "store_grads + distill fp32 GPU recomputing activations vs CPU keeping them")
    sets = ["distill.enabled=true", "model.dtype=bf16", "compress.importance=magnitude"]  # a bf16 teacher
    g = pclib.run_arrays(run("distill-bf16-cuda", 1, "backend.device=cuda", "backend.matmul=fp32", *sets))
    c = pclib.run_arrays(run("distill-bf16-cpu", 1, "backend.device=cpu", *sets))
    r0, r1 = abs(g[0][0] - c[0][0]) / c[0][0], abs(g[0][-1] - c[0][-1]) / c[0][-1]
    pclib.check(r0 < 1e-4 and r1 < 1e-2, f"bf16 teacher GPU vs CPU emulation: first loss rel {r0:.2e}, last {r1:.2e}")

    gpu = os.path.join(root, "compress-cuda")
    val = pclib.run_arrays(gpu)[2][-1]
    ref = pclib.hf_val_loss(os.path.join(gpu, "final"), toks[10000:], SEQ, 2 * 4)
    pclib.check(abs(ref - val) / ref < 2e-5, f"transformers loads the GPU output: val {ref:.6f} vs ours {val:.6f}")
    shard = run("compress-cuda-shard", 1, "backend.device=cuda", "backend.matmul=fp32", "compress.shard_grads=true")
    pclib.close_runs(pclib.run_arrays(shard), pclib.run_arrays(gpu), 1e-5, 1e-4, "sharded G vs whole G on the GPU")
    log = open(os.path.join(gpu, "logs", "rank-00000.log")).read()
    m = re.search(r"gradients of (\d+) of \d+ blocks kept here .*recomputes the rest \((\S+) FLOPs", log)
    pclib.check(m is not None and m.group(1) != "0" and float(m.group(2)) == 0,
                f"store_grads auto keeps the gradients of every block with projections on the GPU "
                f"({m.group(0) if m else 'not logged'})")
    rec = run("compress-cuda-recompute", 1, "backend.device=cuda", "backend.matmul=fp32", "compress.store_grads=false")
    pclib.close_runs(pclib.run_arrays(rec), pclib.run_arrays(gpu), 1e-6, 1e-6,
                     "the update recomputing the gradients vs keeping them on the GPU")

    demo(root)

    if n >= 2:
        d = run("compress-nccl-np2", 2, "backend.device=cuda", "backend.matmul=fp32", "compress.split_mb=0.05")
        pclib.check("device collectives over nccl" in open(os.path.join(d, "logs", "rank-00000.log")).read(),
                    "2 ranks: device collectives over NCCL")
        pclib.close_runs(pclib.run_arrays(d), pclib.run_arrays(gpu), 1e-4, 1e-4, "compress np2 NCCL vs np1 GPU")
        d = run("compress-nccl-np2-shard", 2, "backend.device=cuda", "backend.matmul=fp32", "compress.split_mb=0.05",
                "compress.shard_grads=true")
        pclib.close_runs(pclib.run_arrays(d), pclib.run_arrays(gpu), 1e-4, 1e-4, "sharded G np2 NCCL vs np1 GPU")
    else:
        print("one GPU: the NCCL run needs two (skipped that part)")


if __name__ == "__main__":
    main()
