"""backend.matmul: bf16 with the model's bf16 weight copy, through the daemon.

- compress on 1 rank and on 3 ranks with row and column splits: after one step the
  fused weights are the same but for rare elements one bf16 step apart (W_C rounded to
  bf16 from sums in another order: a value at a rounding tie goes the other way); over
  6 steps such flips feed back through training, so the loss curves agree to 1e-3
  relative (fp32 runs: 1e-4, test_sharded.py); the f32 output holds bf16 values only
  (every rank's model is the widened bf16 W_C);
- W_C goes over the wire in bf16: each step after the first moves exactly
  2 x (compressed parameters) bytes fewer than the same run in fp32, and every rank's
  exchange buffer (f32 + bf16 column blocks) is what plan.txt says;
- prune on 1 and 2 ranks (fp32 weights, bf16 copy refreshed each step) agree the same way;
- both resumed from a step-3 checkpoint end bitwise as the uninterrupted run;
- every bf16 run stays close to its fp32 run (losses within 2e-2 relative) without
  equalling it."""
import os
import re
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def main():
    root = pclib.tmpdir("pc-bf16w-")
    job = pclib.sharded_job(root, output={"dtype": "f32"})
    bf16, split = "backend.matmul=bf16", "compress.split_mb=0.01"  # split: every matrix above 10 kB in blocks
    for mode in ["compress", "prune"]:
        ranks = [1, 3] if mode == "compress" else [1, 2]
        runs = {}
        for np_ in ranks:
            sets = [f"run.mode={mode}"] + ([split] if mode == "compress" and np_ > 1 else [])
            runs[np_] = pclib.run_job(root, job, f"{mode}-np{np_}", np_, bf16, *sets)
            runs[np_, "f32"] = pclib.run_job(root, job, f"{mode}-np{np_}-f32", np_, "backend.matmul=fp32", *sets)
            a, f = pclib.run_arrays(runs[np_]), pclib.run_arrays(runs[np_, "f32"])
            rel = np.max(np.abs(a[0] - f[0]) / np.abs(f[0]))
            pclib.check(0 < rel < 2e-2, f"{mode} np{np_}: bf16 losses near fp32 but not equal (max rel {rel:.2e})")
            pclib.check(a[0][-1] < a[0][0], f"{mode} np{np_}: bf16 loss falls {a[0][0]:.4f} -> {a[0][-1]:.4f}")
        # resumed from the checkpoint of step 3: the bf16 copy is rebuilt from what was saved
        # (compress: the projections; prune: the fp32 weights) and the run ends bitwise as
        # the uninterrupted one
        n = ranks[1]
        sets = [f"run.mode={mode}", "checkpoint.every_steps=3"] + ([split] if mode == "compress" else [])
        d = pclib.run_job(root, job, f"{mode}-np{n}-resumed", n, bf16, *sets)
        ck = os.path.join(d, "checkpoints")
        shutil.rmtree(os.path.join(ck, "step-0000006"))
        shutil.rmtree(os.path.join(d, "final"))
        with open(os.path.join(ck, "latest"), "w") as f:
            f.write("step-0000003")
        pclib.projcompd(n, job, f"run.dir={d}", bf16, *sets)
        log = open(os.path.join(d, "logs", "rank-00000.log")).read()
        pclib.check("resumed after step 3" in log, f"{mode} np{n} bf16: resumed after step 3")
        (cr, _, wr), (cu, _, wu) = pclib.run_outputs(d), pclib.run_outputs(runs[n])
        pclib.check(cr[-3:] == cu[-3:] and pclib.same_tensors(wr, wu),
                    f"{mode} np{n} bf16 resumed: steps 4-6 and the output bitwise those of the uninterrupted run")
        one, many = pclib.run_arrays(runs[1]), pclib.run_arrays(runs[ranks[1]])
        rel = np.max(np.abs(many[0] - one[0]) / np.abs(one[0]))
        pclib.check(rel < 1e-3, f"{mode} bf16 np{ranks[1]} vs np1: losses agree (max rel {rel:.2e} < 1e-3)")
        if mode == "prune":
            continue
        first = [pclib.run_arrays(pclib.run_job(root, job, f"{mode}-np{n}-1step", n, bf16, "train.steps=1",
                                      *([split] if n > 1 else [])))[3] for n in ranks]
        a, b = ({k: t.astype(np.float32).view(np.uint32) >> 16 for k, t in f.items()} for f in first)
        n_all = sum(t.size for t in a.values())
        diff = np.concatenate([(a[k].astype(np.int64) - b[k]).ravel() for k in a])
        flips = int(np.count_nonzero(diff))
        pclib.check(flips <= n_all // 1000 and np.all(np.abs(diff) <= 1),
                    f"compress after 1 step: np3 equals np1 but for {flips} of {n_all} elements one bf16 step apart")
        w = one[3]
        bad = [k for k, t in w.items() if np.any(t.astype(np.float32).view(np.uint32) & 0xFFFF)]
        pclib.check(not bad, f"compress np1: every fused tensor holds bf16 values only ({len(w)} tensors; {bad[:2]})")
        n_small = sum(t.size for t in w.values())
        for np_ in ranks:
            saved = pclib.comm_mb(runs[np_, "f32"]) - pclib.comm_mb(runs[np_])  # every step, the first too
            moved = pclib.comm_mb(runs[np_])
            pclib.check(np.all(moved == moved[0]), f"compress np{np_}: every step's row counts the same bytes, the "
                        f"first's W_C gather (made before the loop) too: {moved}")
            want = 2 * n_small / 1e6 if np_ > 1 else 0.0
            pclib.check(np.all(np.abs(saved - want) < 2e-3),
                        f"compress np{np_}: bf16 W_C moves {want:.3f} MB less per step (measured {saved})")
        plan = open(os.path.join(runs[3], "plan.txt")).read()
        pclib.check(" cols " in plan and "  weights_bf16 1  " in plan, "compress np3: plan has column blocks, bf16 W_C")
        for r in range(3):
            log = open(os.path.join(runs[3], "logs", f"rank-{r:05d}.log")).read()
            m = re.search(r"W_C/G exchange buffer: (\d+) bytes here \(plan: (\d+)\)", log)
            f32 = re.search(r"W_C/G exchange buffer: (\d+) bytes",
                            open(os.path.join(runs[3, "f32"], "logs", f"rank-{r:05d}.log")).read())
            pclib.check(m and m.group(1) == m.group(2) and 2 * int(m.group(1)) == 3 * int(f32.group(1)) > 0,
                        f"compress np3 rank {r}: exchange buffer {m and m.groups()} = plan, 1.5 x fp32's")


if __name__ == "__main__":
    main()
