"""A NaN/Inf loss or gradient never passes silently. A pretrain job whose lr (1e30) blows
the weights up must stop with a clear error (exit 1) naming the step, leaving the last
checkpoint intact and no final model; with train.on_nonfinite: skip it logs each skipped
update and still stops after 10 in a row, and metrics.jsonl stays JSON (those steps' loss
or grad_norm null)."""
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def not_json(name):
    raise ValueError(f"{name} is not JSON")


def main():
    root = pclib.tmpdir("pc-nan-")
    mcfg, _ = pclib.tiny_pretrain_inputs(root)
    job = os.path.join(root, "job.yaml")
    pclib.write_yaml(job, {
        "run": {"dir": os.path.join(root, "unset"), "mode": "pretrain"},
        "model": {"config": mcfg},
        "data": {"train": [os.path.join(root, "train.h5")], "seq_len": 16},
        "train": {"steps": 40, "global_batch": 2, "micro_batch": 1, "lr": 1e30, "warmup_steps": 0,
                  "grad_clip": 0},
        "checkpoint": {"every_steps": 1, "keep": 2},
        "backend": {"device": "cpu"},
    })
    for how in ["stop", "skip"]:
        d = os.path.join(root, how)
        p = pclib.projcompd(1, job, f"run.dir={d}", f"train.on_nonfinite={how}", check=False)
        out = p.stdout + p.stderr
        pclib.check(p.returncode == 1, f"{how}: exit status 1 (got {p.returncode})")
        pclib.check("training diverged" in out and "checkpoint" in out, f"{how}: the error says it diverged")
        pclib.check(not os.path.exists(os.path.join(d, "final")), f"{how}: no final model written")
        latest = open(os.path.join(d, "checkpoints", "latest")).read().strip()
        pclib.check(os.path.isdir(os.path.join(d, "checkpoints", latest)), f"{how}: latest checkpoint {latest} intact")
        named = f"the checkpoint of step {int(latest[5:])} in {d}/checkpoints is intact"
        pclib.check(named in out and "norm -nan" not in out, f"{how}: the error names that checkpoint, a NaN is nan")
        if how == "skip":
            pclib.check(out.count("update skipped") == 10, f"skip: 10 skipped updates logged ({out.count('update skipped')})")
        # metrics.jsonl stays JSON (no NaN or Infinity, which JSON has not): a diverged
        # step's loss or grad_norm is null
        rows = [json.loads(line, parse_constant=not_json) for line in open(os.path.join(d, "metrics.jsonl"))]
        bad = [r for r in rows if "loss" in r and (r["loss"] is None or r["grad_norm"] is None)]
        pclib.check(len(bad) == (10 if how == "skip" else 0) and
                    all(r["loss"] is None or math.isfinite(r["loss"]) for r in rows if "loss" in r),
                    f"{how}: metrics.jsonl is JSON, {len(bad)} step(s) with a null loss or grad_norm")


    # diverged before any checkpoint: the error says there is none (not that one is intact)
    d = os.path.join(root, "no-ckpt")
    p = pclib.projcompd(1, job, f"run.dir={d}", "checkpoint.every_steps=0", check=False)
    out = p.stdout + p.stderr
    pclib.check(p.returncode == 1 and "training diverged (lower train.lr?); no checkpoint was written" in out,
                f"no checkpoint yet: the error says so (exit {p.returncode})")


if __name__ == "__main__":
    main()
