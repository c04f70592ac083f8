"""Sharded compression across rank counts: the same compress and prune jobs under
mpirun -np 1, 2, 3 and 4 (the same global batch of 12) give the same loss curve
(1e-4 relative) and the same fused weights (max |diff| <= 1e-4 x max |w|). The compress
runs on 3 and 4 ranks also force row/column splits (compress.split_mb) so that shared
factors are all-reduced between owners; plan.txt must show them. Those runs reduce G
during the backward (backend.overlap_comm, the default); with it off, after the backward,
they give bitwise the same results and move the same bytes. On every compress rank the
projection work buffers and the exchange buffer are what plan.txt counts, also for a
one-layer model on 10 ranks on the guarded backend, where some ranks own norm gains only
(whose gradient still passes through the work buffer). Every rank logs its local rank
on this one host."""
import os
import re
import sys

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def check_buffers(d, np_, strided, what):
    """Every rank's logged exchange buffer and projection work buffers equal the plan's, and
    every rank found its place on this host."""
    for r in range(np_):
        log = open(os.path.join(d, "logs", f"rank-{r:05d}.log")).read()
        m = re.search(r"W_C/G exchange buffer: (\d+) bytes here \(plan: (\d+)\)", log)
        pclib.check(m and m.group(1) == m.group(2) and (int(m.group(1)) > 0) == strided,
                    f"{what} rank {r}: exchange buffer vs plan: {m and m.groups()}")
        m = re.search(r"projection work buffers: (\d+) bytes here \(plan: (\d+)\)", log)
        pclib.check(m and m.group(1) == m.group(2) and int(m.group(1)) > 0,
                    f"{what} rank {r}: projection work buffers vs plan: {m and m.groups()}")
        m = re.search(r"node \S+: local rank (\d+) of (\d+)", log)  # one host: local rank = rank
        pclib.check(m and (int(m.group(1)), int(m.group(2))) == (r, np_), f"{what} rank {r}: {m and m.group(0)}")


def main():
    root = pclib.tmpdir("pc-sharded-")
    job = pclib.sharded_job(root)
    for mode in ["compress", "prune"]:
        ref_curve, ref_w = None, None
        for np_ in [1, 2, 3, 4]:
            d = os.path.join(root, f"{mode}-np{np_}")
            sets = [f"run.dir={d}", f"run.mode={mode}"]
            if mode == "compress" and np_ >= 3:
                sets.append("compress.split_mb=0.01")  # cut every matrix above 10 kB into blocks
            pclib.projcompd(np_, job, *sets)
            curve = np.array([m["loss"] for m in pclib.metrics(d) if "loss" in m])
            w = load_file(os.path.join(d, "final", "model.safetensors"))
            if mode == "compress" and np_ >= 3:
                plan = open(os.path.join(d, "plan.txt")).read()
                pclib.check(" rows " in plan and " cols " in plan, f"{mode} np{np_}: plan has row and column blocks")
            if mode == "compress":  # column blocks of o_proj exist only with forced splits
                check_buffers(d, np_, np_ >= 3, f"{mode} np{np_}")
            if ref_curve is None:
                ref_curve, ref_w = curve, w
                pclib.check(curve[-1] < curve[0], f"{mode}: loss falls {curve[0]:.4f} -> {curve[-1]:.4f}")
                continue
            if mode == "compress" and np_ >= 3:  # G reduced after the backward, not during it: the same numbers
                late = os.path.join(root, f"{mode}-np{np_}-no-overlap")
                pclib.projcompd(np_, job, *sets, f"run.dir={late}", "backend.overlap_comm=false")
                pclib.same_outputs(pclib.run_outputs(late), pclib.run_outputs(d), f"{mode} np{np_} overlap off vs on")
                moved = [[m["comm_mb"] for m in pclib.metrics(x) if "loss" in m] for x in (late, d)]
                pclib.check(moved[0] == moved[1], f"{mode} np{np_} overlap off vs on: the same bytes moved")
            rel = np.max(np.abs(curve - ref_curve) / np.abs(ref_curve))
            pclib.check(rel < 1e-4, f"{mode} np{np_}: loss curve equals np1 (max rel {rel:.2e})")
            worst = max(np.max(np.abs(w[k] - ref_w[k])) / np.max(np.abs(ref_w[k])) for k in ref_w)
            pclib.check(worst < 1e-4, f"{mode} np{np_}: fused weights equal np1 (max rel {worst:.2e})")

    # one layer: 9 matrix blocks and 3 norm gains, so on 10 ranks some own gains only
    one = os.path.join(root, "one-layer")
    os.makedirs(one)
    job1 = pclib.two_way_job(one, 1, micro_batch=1)
    sets = ["train.steps=2", "train.global_batch=10", "backend.device=cpu-guarded"]
    d1 = pclib.run_job(one, job1, "np1", 1, *sets)
    d10 = pclib.run_job(one, job1, "np10", 10, *sets)
    plan = open(os.path.join(d10, "plan.txt")).read()
    owners = {int(line.split()[3]) for line in plan.splitlines()
              if line.startswith("  model.") and " norm " not in line}
    pclib.check(len(owners) < 10, f"np10: {10 - len(owners)} rank(s) own norm gains only")
    check_buffers(d10, 10, False, "one layer np10")
    a, b = pclib.run_arrays(d10), pclib.run_arrays(d1)
    pclib.close_runs(a, b, 1e-4, 1e-4, "one layer np10 (guarded) vs np1")


if __name__ == "__main__":
    main()
