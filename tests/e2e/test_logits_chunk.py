"""The head and loss in chunks (train.logits_chunk) change memory, not results beyond fp32
rounding. Compress (np2 with split blocks and the overlapped W_C gather / G reduce; np1
with store_grads and activation checkpointing), prune and pretrain run with chunks of 5
of each micro-batch's 32 tokens (the last chunk 2) on the CPU backend and the guarded one
(device buffers), against the same runs with the whole head: losses and grad norms within
1e-5 relative, validation losses within 1e-5, fused weights within 1e-4. A chunk of the
whole micro-batch or more is the whole head, bit for bit. plan.txt's activation column
falls by the logits not held (exactly: plan-unit), and on a shape where the logits
dominate the measured peak RSS falls by what the plan predicts (within 35%; not under a
sanitizer)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

SEQ, MB = 16, 2


def close_evals(a, b, what):
    va, vb = np.array(a[2]), np.array(b[2])
    rel = np.max(np.abs(va - vb) / np.abs(vb))
    pclib.check(len(va) == len(vb) > 0 and rel < 1e-5, f"{what}: validation losses agree (max rel {rel:.2e})")


def main():
    root = pclib.tmpdir("pc-logits-chunk-")
    job = pclib.two_way_job(root, 2, MB, SEQ)
    pjob = pclib.tiny_pretrain_job(root, SEQ, 4, {"device": "cpu"})
    cases = [
        ("compress-np2-split", job, 2, ["compress.split_mb=0.01"]),
        ("compress-store-recompute", job, 1, ["compress.store_grads=true", "train.activation_checkpointing=true"]),
        ("prune", job, 1, ["run.mode=prune"]),
        ("pretrain", pjob, 1, []),
    ]
    for name, j, np_, sets in cases:
        ref = pclib.run_job(root, j, name, np_, *sets)
        for dev in ["cpu", "cpu-guarded"]:
            d = pclib.run_job(root, j, f"{name}-chunk5-{dev}", np_, *sets, "train.logits_chunk=5",
                              f"backend.device={dev}")
            what = f"{name} np{np_} chunks of 5 on {dev}"
            a, b = pclib.run_arrays(d), pclib.run_arrays(ref)
            pclib.close_runs(a, b, 1e-5, 1e-4, what)
            close_evals(a, b, what)
        d = pclib.run_job(root, j, f"{name}-chunk-all", np_, *sets, f"train.logits_chunk={MB * SEQ}")
        pclib.same_outputs(pclib.run_outputs(ref), pclib.run_outputs(d), f"{name}: a chunk of the whole micro-batch")
    plan = open(os.path.join(root, "compress-np2-split-chunk5-cpu", "plan.txt")).read()
    pclib.check("  logits_chunk 5  " in plan, "plan.txt records the chunk (its bytes: plan-unit)")

    # memory: a 32768 vocabulary and 4 x 256 tokens per micro-batch, so that logits dominate
    big = pclib.memory_root(root)
    if big is None:
        return
    mjob = pclib.memory_job(big, 32768, 64, 128, 2, 48, 96, 256, 4)
    (_, whole), (_, chunked) = pclib.rss_vs_plan(big, mjob, "act", [
        (f"mem-{chunk}", [f"train.logits_chunk={chunk}"]) for chunk in [0, 256]])
    pclib.check(whole - chunked > 0.5 * whole, f"plan: chunks of 256 keep {chunked:.1f} of {whole:.1f} MiB")


if __name__ == "__main__":
    main()
