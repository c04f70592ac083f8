"""Activation checkpointing (train.activation_checkpointing) changes memory, not results.
Compress (np1 with store_grads and distillation; np2 with split blocks), prune and
pretrain give bitwise the same loss and grad-norm curves, validation losses and output
with it as without it, on the CPU backend and on the guarded one (device buffers).
plan.txt's activation column shrinks, and on a shape where activations dominate the
measured peak RSS falls by what the plan predicts (within 35%; not under a sanitizer,
whose shadow memory and quarantine are in the RSS)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

V, SEQ = 96, 16


def main():
    root = pclib.tmpdir("pc-recompute-")
    job = pclib.two_way_job(root, 3, 2, SEQ)
    cases = [
        ("compress-store-distill", 1, ["compress.store_grads=true", "distill.enabled=true"]),
        ("compress-np2-split", 2, ["compress.split_mb=0.01"]),
        ("prune", 1, ["run.mode=prune"]),
    ]
    for name, np_, sets in cases:
        ref = pclib.run_job(root, job, name, np_, *sets)
        for dev in ["cpu", "cpu-guarded"]:
            d = pclib.run_job(root, job, f"{name}-rc-{dev}", np_, *sets, "train.activation_checkpointing=true",
                    f"backend.device={dev}")
            pclib.same_outputs(pclib.run_outputs(ref), pclib.run_outputs(d),
                               f"{name} np{np_}: recomputing on {dev} vs keeping every activation on cpu")
    pjob = pclib.tiny_pretrain_job(root, SEQ, 4, {"device": "cpu"})
    a = pclib.run_job(root, pjob, "pretrain", 1)
    b = pclib.run_job(root, pjob, "pretrain-rc", 1, "train.activation_checkpointing=true")
    pclib.same_outputs(pclib.run_outputs(a), pclib.run_outputs(b), "pretrain np1: recomputing vs keeping")

    # memory: 12 layers, 8 x 256 tokens per micro-batch, so that activations dominate
    big = pclib.memory_root(root)
    if big is None:
        return
    mjob = pclib.memory_job(big, V, 128, 256, 12, 96, 192, 256, 8)
    (_, whole), (_, kept) = pclib.rss_vs_plan(big, mjob, "act", [
        (f"mem-{rc}", [f"train.activation_checkpointing={rc}"]) for rc in ["false", "true"]])
    pclib.check(whole - kept > 0.5 * whole, f"plan: recomputing keeps {kept:.1f} of {whole:.1f} MiB")


if __name__ == "__main__":
    main()
