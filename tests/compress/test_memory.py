"""Per-rank memory shrinks with the rank count as the plan says: a compress job run on
1, 2 and 4 ranks records every rank's peak RSS; the drop in the median rank's RSS from
1 to N ranks must be within 35% of the drop the plan predicts (plan.txt 'total'
column), and every rank's RSS must shrink. Fixed per-process overhead (MPI, libraries,
the replicated compressed model) cancels in the difference; the median leaves out
rank 0's extra work (writing the output model). With a 32768 vocabulary the peak RSS
stays within the plan's total plus 400 MiB (no host buffer of V x V)."""
import os
import statistics
import sys


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def main():
    if os.environ.get("PC_SANITIZER"):  # tests/sanitize.sh: RSS also holds the sanitizer's shadow and quarantine
        print(f"SKIP: peak RSS under {os.environ['PC_SANITIZER']} is not the daemon's memory")
        return 77
    root = pclib.tmpdir("pc-mem-")
    V, D, F, L = 4096, 256, 1024, 6
    bdir, _ = pclib.tiny_base(root, 0, V, D, F, L, head_dim=64, scale=0)
    toks = pclib.markov_tokens(20000, V, seed=2)
    pclib.write_shard(os.path.join(root, "train.h5"), toks, V)
    job = os.path.join(root, "job.yaml")
    pclib.write_yaml(job, {
        "run": {"dir": os.path.join(root, "unset"), "mode": "compress"},
        "model": {"base": bdir},
        "compress": {"d_model": 128, "d_ff": 512, "importance": "magnitude"},
        "data": {"train": [os.path.join(root, "train.h5")], "seq_len": 32},
        "train": {"steps": 2, "global_batch": 4, "micro_batch": 1},
        "checkpoint": {"every_steps": 0},
        "backend": {"device": "cpu"},
    })
    rss, plans = {}, {}
    for np_ in [1, 2, 4]:
        d = os.path.join(root, f"np{np_}")
        pclib.projcompd(np_, job, f"run.dir={d}")
        rss[np_] = pclib.peak_rss(d)
        plans[np_] = [r["total"] for r in pclib.plan_table(d)]
        print(f"np {np_}: peak RSS per rank (MiB) {rss[np_]}; plan per rank (MiB) {[round(x, 1) for x in plans[np_]]}")
    for np_ in [2, 4]:
        med = statistics.median(rss[np_])
        measured = rss[1][0] - med
        planned = plans[1][0] - statistics.median(plans[np_])
        pclib.check(max(rss[np_]) < rss[1][0], f"np{np_}: every rank's RSS shrinks: {rss[1][0]:.0f} -> "
                    f"at most {max(rss[np_]):.0f} MiB")
        pclib.check(abs(measured - planned) <= 0.35 * planned,
                    f"np{np_}: median rank RSS drop {measured:.1f} MiB vs plan {planned:.1f} MiB")

    # a large vocabulary: nothing on the host scales with V x V (the embedding's and the
    # head's kept output side once sized a (V, V) host buffer for their P_out: 4 GiB here,
    # 61 GiB for Llama 3's 128256). The RSS stays within the plan's total plus the fixed
    # overhead (MPI, libraries, host staging), which is about 260 MiB here.
    big = os.path.join(root, "vocab")
    os.makedirs(big)
    V = 32768
    vjob = pclib.memory_job(big, V, 64, 128, 2, 48, 96, 64, 2)
    d = pclib.run_job(big, vjob, "np1", 1)
    peak = pclib.peak_rss(d)[0]
    total = pclib.plan_table(d)[0]["total"]
    pclib.check(peak < total + 400, f"vocab {V}: peak RSS {peak:.0f} MiB within the plan's {total:.0f} MiB + 400")


if __name__ == "__main__":
    sys.exit(main())
