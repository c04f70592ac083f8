"""compress.store_grads changes memory and FLOPs, not results. A compress job on 1 rank and
on 2 (split blocks) gives bitwise the same loss and grad-norm curves, validation losses and
output whether the update recomputes every block's gradients (false), takes every block's
kept from the norm pass (true), or some of each (auto within a backend.memory_gib that
leaves room for about half of them); on 2 ranks with compress.shard_grads too. plan.txt's grads column says what each rank keeps and
the log agrees; auto without a memory size keeps none. A backend.memory_gib the plan does
not fit in stops the run before any weight is read, naming the key and the remedies. On a
shape where the gradients are large, the measured peak RSS grows by what the plan's grads
column says (within 35%; not under a sanitizer). The tflops metric adds the projections'
FLOPs to the compressed model's, which alone make the mfu metric."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

GIB = 1024.0  # MiB


def kept_blocks(run_dir, np_):
    """(kept, owned) blocks per rank, from the ranks' logs; the gradients' MiB allocated
    must be the plan's."""
    out = []
    for r in range(np_):
        path = os.path.join(run_dir, "logs", f"rank-{r:05d}.log")
        m = re.search(r"gradients of (\d+) of (\d+) blocks kept here \(([\d.]+) MiB, plan ([\d.]+)\)",
                      open(path).read())
        if not m:
            pclib.fail(f"FAIL: {path}: no line on the kept gradients")
        pclib.check(m.group(3) == m.group(4), f"{path}: kept {m.group(3)} MiB, plan {m.group(4)}")
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def capacity_for_half(run_dir):
    """backend.memory_gib that leaves room for about half of rank 0's gradients under
    auto: from the plan of a run that keeps them all (totals with and without them)."""
    row = pclib.plan_table(run_dir)[0]
    without = row["total"] - row["grads"]
    return (without + row["grads"] / 2) * 16 / 15 / GIB


def main():
    root = pclib.tmpdir("pc-store-grads-")
    # a base wide enough that its gradients (about 17 MiB) show in plan.txt's GiB figures
    bdir, _ = pclib.tiny_base(root, 4, 96, 256, 1024, 2)
    pclib.markov_shards(root, 96, 5000, 1000, seed=2)
    job = pclib.compress_job(
        root, bdir, 3, 16, {"d_model": 128, "d_ff": 512, "importance": "magnitude"},
        {"steps": 3, "global_batch": 4, "micro_batch": 2, "lr": 3e-3, "warmup_steps": 1},
        eval={"batches": 2, "every_steps": 2}, checkpoint={"every_steps": 0}, backend={"device": "cpu"})
    for np_, sets in [(1, []), (2, ["compress.split_mb=0.01"])]:
        tag = f"np{np_}"
        ref = pclib.run_job(root, job, f"{tag}-false", np_, *sets, "compress.store_grads=false")
        every = pclib.run_job(root, job, f"{tag}-true", np_, *sets, "compress.store_grads=true",
                              "backend.peak_tflops=0.5")
        pclib.check_flops_metrics(every, np_, 16, 4, peak=0.5)  # mfu counts the model, not the projections
        none = pclib.run_job(root, job, f"{tag}-auto-unknown", np_, *sets)  # the default: auto
        gib = capacity_for_half(every)
        half = pclib.run_job(root, job, f"{tag}-auto-half", np_, *sets, f"backend.memory_gib={gib:.6f}")
        for d, what in [(every, "true"), (none, "auto, no memory size"), (half, f"auto within {gib:.4f} GiB")]:
            pclib.same_outputs(pclib.run_outputs(ref), pclib.run_outputs(d), f"{tag}: store_grads {what} vs false")
        k_ref, k_every, k_none, k_half = (kept_blocks(d, np_) for d in (ref, every, none, half))
        g_every, g_half = (pclib.plan_table(d) for d in (every, half))
        for r in range(np_):
            kept, owned = k_half[r]
            pclib.check(k_ref[r][0] == 0 and k_none[r][0] == 0 and k_every[r] == (owned, owned),
                        f"{tag} rank {r}: kept blocks false {k_ref[r]}, auto unknown {k_none[r]}, true {k_every[r]}")
            pclib.check(pclib.plan_table(ref)[r]["grads"] == 0 and pclib.plan_table(none)[r]["grads"] == 0,
                        f"{tag} rank {r}: the plan keeps no gradients with false or an unknown memory size")
            if r == 0:
                pclib.check(0 < kept < owned and 0 < g_half[0]["grads"] < g_every[0]["grads"],
                            f"{tag}: auto within {gib:.4f} GiB keeps {kept} of {owned} blocks, "
                            f"{g_half[0]['grads']:.2f} of {g_every[0]['grads']:.2f} MiB")
            pclib.check(g_half[r]["total"] <= gib * GIB * 15 / 16 + 0.01,
                        f"{tag} rank {r}: auto plans {g_half[r]['total']:.2f} MiB, within 15/16 of "
                        f"{gib * GIB:.2f}")
        print(f"{tag}: kept blocks per rank: true {k_every}, auto at {gib:.4f} GiB {k_half}")

    # with the sharded G (compress.shard_grads: the blocks' G summed on their owners), which
    # the kept gradients are computed from as well
    sets = ["compress.split_mb=0.01", "compress.shard_grads=true"]
    a = pclib.run_job(root, job, "np2-shard-false", 2, *sets, "compress.store_grads=false")
    b = pclib.run_job(root, job, "np2-shard-true", 2, *sets, "compress.store_grads=true")
    pclib.same_outputs(pclib.run_outputs(a), pclib.run_outputs(b), "np2, sharded G: store_grads true vs false")

    # a memory size the plan does not fit in: refused before any weight is read
    d = os.path.join(root, "too-small")
    p = pclib.projcompd(1, job, f"run.dir={d}", "backend.memory_gib=0.001", check=False)
    err = p.stdout + p.stderr
    pclib.check(p.returncode != 0 and "backend.memory_gib" in err and "GiB" in err and "try " in err,
                f"memory_gib 0.001: exit {p.returncode}, message: {err[-600:]}")
    pclib.check(not os.path.exists(os.path.join(d, "final")), "memory_gib 0.001: no output written")

    # memory: gradients of 6 layers at 256 -> 128 / 1024 -> 512 are about 4 x 7.3M bytes
    big = pclib.memory_root(root)
    if big is None:
        return
    mjob = pclib.memory_job(big, 4096, 256, 1024, 6, 128, 512, 32, 2)
    (_, g0), (_, g1) = pclib.rss_vs_plan(big, mjob, "grads", [(f"mem-{s}", [f"compress.store_grads={s}"])
                                                             for s in ["false", "true"]])
    pclib.check(g1 - g0 > 16, f"plan: the kept gradients are {g1 - g0:.1f} MiB")


if __name__ == "__main__":
    main()
