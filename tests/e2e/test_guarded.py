"""Device-resident code paths without a GPU: every mode runs on the guarded CPU backend
(backend.device: cpu-guarded), whose buffers fault when host code touches them and
whose ops reject host pointers, and must give bitwise the plain CPU backend's losses
and output. Covers compress (activation importance; store_grads and distillation; on
2 ranks with split blocks, so projections, gathers, reduce-scatters and shared-factor
all-reduces run on device buffers through the staged MPI comm), prune on 2 ranks,
pretrain, eval, bf16 products (backend.matmul) with bf16 base storage and a bf16
distillation teacher, and a resume
from a checkpoint written and read through the device."""
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

V, D, F, L, DC, FC, SEQ = 96, 64, 128, 2, 48, 80, 16


def pair(root, job, name, np_, *sets):
    """The job on the CPU backend and on the guarded backend; returns both outputs."""
    out = []
    for dev in ["cpu", "cpu-guarded"]:
        d = os.path.join(root, f"{name}-{dev}")
        p = pclib.projcompd(np_, job, f"run.dir={d}", f"backend.device={dev}", *sets)
        if dev == "cpu-guarded":
            pclib.check("cpu-guarded" in open(os.path.join(d, "logs", "rank-00000.log")).read(),
                        f"{name}: the guarded backend ran")
        out.append(pclib.run_outputs(d))
    return out


def main():
    root = pclib.tmpdir("pc-guarded-")
    bdir, _ = pclib.tiny_base(root, 4, V, D, F, L)
    pclib.markov_shards(root, V, 5000, 1000, seed=2)
    job = pclib.compress_job(
        root, bdir, 3, SEQ,
        {"d_model": DC, "d_ff": FC, "importance": "activation", "calibration_sequences": 8},
        {"steps": 6, "global_batch": 4, "micro_batch": 2, "lr": 3e-3, "warmup_steps": 1},
        eval={"batches": 2, "every_steps": 3}, checkpoint={"every_steps": 3, "keep": 3}, backend={"threads": 1})
    a, b = pair(root, job, "compress", 1)
    pclib.same_outputs(a, b, "compress np1")
    a, b = pair(root, job, "compress-store-distill", 1, "compress.store_grads=true", "distill.enabled=true")
    pclib.same_outputs(a, b, "compress np1 store_grads + distill")
    a, b = pair(root, job, "compress-bf16-matmul", 1, "backend.matmul=bf16", "model.dtype=bf16", "distill.enabled=true")
    pclib.same_outputs(a, b, "compress np1 bf16 products, bf16 base storage and a bf16 teacher")
    a, b = pair(root, job, "compress-np2-split", 2, "compress.split_mb=0.01")
    plan = open(os.path.join(root, "compress-np2-split-cpu-guarded", "plan.txt")).read()
    pclib.check(" rows " in plan and " cols " in plan, "np2 plan has row and column blocks (shared factors)")
    pclib.same_outputs(a, b, "compress np2 with split blocks (staged comm)")
    a, b = pair(root, job, "prune-np2", 2, "run.mode=prune")
    pclib.same_outputs(a, b, "prune np2")

    # resume: drop the last checkpoint and the output of the guarded compress run, rerun
    d = os.path.join(root, "compress-cpu-guarded")
    ck = os.path.join(d, "checkpoints")
    steps = sorted(x for x in os.listdir(ck) if x.startswith("step-"))
    pclib.check(steps[-2:] == ["step-0000003", "step-0000006"], f"checkpoints written: {steps}")
    shutil.rmtree(os.path.join(ck, steps[-1]))
    os.remove(os.path.join(ck, "latest"))
    shutil.rmtree(os.path.join(d, "final"))
    os.remove(os.path.join(d, "metrics.jsonl"))
    pclib.projcompd(1, job, f"run.dir={d}", "backend.device=cpu-guarded")
    pclib.check("resumed after step 3" in open(os.path.join(d, "logs", "rank-00000.log")).read(),
                "guarded compress resumed from step 3")
    ref = pclib.run_outputs(os.path.join(root, "compress-cpu"))
    res = pclib.run_outputs(d)
    pclib.check(res[0] == ref[0][3:], "resumed guarded run: steps 4-6 bitwise equal the uninterrupted CPU run")
    pclib.check(all(np.array_equal(res[2][k], ref[2][k]) for k in ref[2]),
                "resumed guarded run: output bitwise equal the uninterrupted CPU run")

    # pretrain from a config (random init) and eval of its output
    pjob = pclib.tiny_pretrain_job(root, SEQ, 5, {"threads": 1})
    a, b = pair(root, pjob, "pretrain", 1)
    pclib.same_outputs(a, b, "pretrain np1")
    ev = []
    for dev in ["cpu", "cpu-guarded"]:
        d = os.path.join(root, f"eval-{dev}")
        pclib.projcompd(1, pjob, f"run.dir={d}", "run.mode=eval", f"backend.device={dev}", "model.config=",
                        f"model.base={os.path.join(root, 'pretrain-cpu', 'final')}")
        ev.append([m["val_loss"] for m in pclib.metrics(d) if "val_loss" in m])
    pclib.check(len(ev[0]) == 1 and ev[0] == ev[1], f"eval: guarded {ev[1]} equals cpu {ev[0]}")


if __name__ == "__main__":
    main()
