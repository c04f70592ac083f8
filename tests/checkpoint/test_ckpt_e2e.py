"""Checkpoint and resume of the real daemon under mpirun, on a tiny compress job (a tied
GQA base made by transformers) and a tiny prune job.

- SIGTERM to every rank mid-run: exit status 3, a checkpoint is written, no final model;
  the same command again finishes with final weights bitwise identical to an
  uninterrupted run on the same rank count (compress, and prune: both methods).
- stop (SIGUSR1 through mpirun) a run started on 4 ranks, resume it on 2, and the
  reverse: final weights equal the uninterrupted run's within 1e-5 relative; the same
  with matrices cut into pieces, and between 2 ranks and 1 where compress.d_model keeps the
  base's width (pieces of A with no projection on their cut side).
- kill -9 trials (checkpoint every step): one rank or every rank killed at a random
  moment, or just after a checkpoint's temporary directory appears (inside a write);
  after every kill `latest` names a checkpoint that verifies, and the same command
  resumes to final weights bitwise identical to the uninterrupted run.
- checkpoint.at_end false: the periodic checkpoints only, none after the last step, and
  the same final weights.
- guards on resuming a copy of a finished run: the keys changed since the checkpoint
  are named; a partial last line of metrics.jsonl (a write cut short) is cut off and
  every line stays JSON; a train.steps below the newest checkpoint's step is refused;
  resuming a compress run on another base of the same shapes is refused (a copy of the
  base resumes); with every checkpoint damaged the run stops naming them and deletes
  none (rather than start over and prune them).
- an eval run (nothing to checkpoint) signalled while it evaluates: SIGUSR1 through
  mpirun is ignored (the run finishes with the uninterrupted run's loss); SIGTERM to
  every rank ends it at once, with no result and no checkpoint.
Every subprocess has a hard timeout; processes left by a failed trial are killed by pid."""
import os
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

V, D, F, L, DC, FC, SEQ = 96, 32, 64, 2, 24, 40, 16
STEPS = 10
CKPT_TOOL = os.path.join(pclib.BUILD, "tests", "checkpoint", "ckpt_tool")
TRIALS = int(os.environ.get("PC_CKPT_TRIALS", "12"))


def children(pid):
    """Direct children of pid (the ranks of a local mpirun)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def running(pid):
    """Whether pid is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


LIVE = []  # launched mpiruns (own sessions), killed by process group when the test exits


def cleanup():
    for p in LIVE:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass


def start(np_, job, run_dir, *sets):
    args = ["mpirun", "--oversubscribe", "-np", str(np_), pclib.PROJCOMPD, "--cfg", job, "--set", f"run.dir={run_dir}"]
    for s in sets:
        args += ["--set", s]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=pclib.env(),
                         start_new_session=True)
    LIVE.append(p)
    return p


def finish(p, timeout=120):
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        raise SystemExit(f"FAIL: mpirun did not finish in {timeout} s:\n{out[-3000:]}")
    return p.returncode, out


def ranks_of(p, np_, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        kids = children(p.pid)
        if len(kids) >= np_:
            return kids
        if p.poll() is not None:
            return []
        time.sleep(0.01)
    return children(p.pid)


def wait_for(pred, timeout=60, p=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if p is not None and p.poll() is not None:
            return pred()
        time.sleep(0.005)
    return False


def latest(run_dir):
    try:
        with open(os.path.join(run_dir, "checkpoints", "latest")) as f:
            return f.read().strip()
    except OSError:
        return None


def checkpoints(run_dir):
    """Names of the complete checkpoints in run_dir, oldest first."""
    return sorted(n for n in os.listdir(os.path.join(run_dir, "checkpoints")) if n.startswith("step-"))


def tool(*args):
    return subprocess.run([CKPT_TOOL, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=60)


def final(run_dir):
    return load_file(os.path.join(run_dir, "final", "model.safetensors"))


def bitwise(a, b):
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def max_rel(a, b):
    return max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(b[k])), 1e-30)) for k in b)


def run_ok(np_, job, run_dir, *sets):
    rc, out = finish(start(np_, job, run_dir, *sets))
    if rc != 0:
        raise SystemExit(f"FAIL: run {run_dir} exited {rc}:\n{out[-3000:]}")
    return out


def stop_and_resume(job, root, tag, np_first, np_second, sig, to_ranks, *sets):
    """Stop a run after its first checkpoint with `sig`, then resume it with the same command."""
    d = os.path.join(root, tag)
    p = start(np_first, job, d, *sets)
    kids = ranks_of(p, np_first)
    pclib.check(wait_for(lambda: latest(d) is not None, 60, p), f"{tag}: a first checkpoint appears")
    if to_ranks:
        for k in kids:
            os.kill(k, sig)
    else:
        os.kill(p.pid, sig)
    rc, out = finish(p)
    pclib.check(rc == 3, f"{tag}: stopped run exits 3 (got {rc})")
    pclib.check(not os.path.exists(os.path.join(d, "final")), f"{tag}: no final model after a stop")
    got = tool("find", os.path.join(d, "checkpoints")).stdout.strip()
    pclib.check(got.isdigit() and 0 < int(got) < STEPS, f"{tag}: stopped at step {got} of {STEPS} with a checkpoint")
    out = run_ok(np_second, job, d, *sets)
    pclib.check(f"resumed after step {got}" in out, f"{tag}: the same command resumes after step {got}")
    return final(d)


def resume_guards(job, root, ref_dir):
    d = os.path.join(root, "guards")
    shutil.copytree(ref_dir, d, ignore=shutil.ignore_patterns("final"))
    with open(os.path.join(d, "metrics.jsonl"), "a") as f:
        f.write('{"step": 11, "loss": 4.1')  # a row cut short
    out = run_ok(2, job, d, f"train.steps={STEPS + 2}")
    pclib.check("cut off a partial last line" in out, "a partial last line of metrics.jsonl is cut off (warned)")
    pclib.check(f"resuming with 2 key(s) changed since it was written: run.dir: \"{ref_dir}\" -> \"{d}\"; "
                f"train.steps: {STEPS} -> {STEPS + 2}" in out, "the resume names the keys changed, old -> new")
    rows = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]  # every line is JSON
    pclib.check([r["step"] for r in rows if "loss" in r][-2:] == [STEPS + 1, STEPS + 2],
                f"then the resumed steps' rows follow ({len(rows)} rows)")
    rc, out = finish(start(2, job, d, "train.steps=6"))
    pclib.check(rc != 0 and f"step {STEPS + 2}, past train.steps 6" in out,
                f"train.steps below the newest checkpoint's step is refused (exit {rc})")
    # another base of the same shapes (one weight changed): compress reads its frozen
    # slices while it trains, so resuming on it is refused; a copy of the base is fine
    other, same = os.path.join(root, "base-other"), os.path.join(root, "base-copy")
    shutil.copytree(os.path.join(root, "base"), other)
    shutil.copytree(os.path.join(root, "base"), same)
    w = load_file(os.path.join(other, "model.safetensors"))
    w["model.layers.1.mlp.up_proj.weight"][3, 5] += 1.0
    save_file(w, os.path.join(other, "model.safetensors"), metadata={"format": "pt"})
    pclib.check("meta base " in open(os.path.join(d, "checkpoints", checkpoints(d)[-1], "MANIFEST")).read(),
                "the checkpoint records its base's fingerprint")
    rc, out = finish(start(2, job, d, f"train.steps={STEPS + 4}", f"model.base={other}"))
    pclib.check(rc != 0 and f"model.base '{other}' is not the model this checkpoint was trained from" in out,
                f"resuming on another base of the same shapes is refused (exit {rc})")
    rc, out = finish(start(2, job, d, f"train.steps={STEPS + 4}", "run.mode=prune"))
    pclib.check(rc != 0 and "checkpoint has mode 'compress', this run has 'prune' (use another run.dir, or remove "
                f"{d}/checkpoints to start this run over)" in out and "resuming the kept indices" not in out,
                f"a prune on a compress run's directory is refused, naming what to remove (exit {rc})")
    os.makedirs(os.path.join(d, "final.tmp-999"))  # what a save killed half-way leaves
    open(os.path.join(d, "final.tmp-999", "config.json"), "w").write("{")
    os.makedirs(os.path.join(d, "final.tmp-mine"))  # not a name the save gives: the user's own
    open(os.path.join(d, "final.tmp-mine", "notes"), "w").write("mine")
    rc, out = finish(start(2, job, d, f"train.steps={STEPS + 3}", f"model.base={same}"))
    pclib.check(rc == 0 and "model.base: " in out, f"a copy of the base resumes, the path change warned (exit {rc})")
    pclib.check(sorted(n for n in os.listdir(d) if n.startswith("final")) == ["final", "final.tmp-mine"] and
                os.path.exists(os.path.join(d, "final", "model.safetensors")),
                "the final model is written whole into place, a killed save's leftovers removed (final.tmp-mine kept)")
    names = checkpoints(d)
    for n in names:  # damage every checkpoint: one byte of a block file each
        blk = sorted(f for f in os.listdir(os.path.join(d, "checkpoints", n)) if f.endswith(".blk"))[0]
        with open(os.path.join(d, "checkpoints", n, blk), "r+b") as f:
            f.seek(40)
            b = f.read(1)
            f.seek(40)
            f.write(bytes([b[0] ^ 0xFF]))
    rc, out = finish(start(2, job, d, f"train.steps={STEPS + 4}"))
    pclib.check(rc != 0 and f"none of the {len(names)} checkpoint(s) verifies" in out and checkpoints(d) == names,
                f"every checkpoint damaged: the run stops naming them and keeps them (exit {rc}, {checkpoints(d)})")


def eval_signals(root):
    """An eval long enough (a few seconds on 2 ranks) to be signalled while it runs."""
    bdir, _ = pclib.tiny_base(root, 3, 4096, 256, 688, 4, heads=4, kv=2, head_dim=64, scale=0, name="eval-base")
    shard = os.path.join(root, "eval-valid.h5")
    pclib.write_shard(shard, pclib.markov_tokens(60000, 4096, seed=3), 4096)
    job = os.path.join(root, "eval.yaml")
    pclib.write_yaml(job, {
        "run": {"dir": os.path.join(root, "unset"), "mode": "eval", "seed": 4},
        "model": {"base": bdir},
        "data": {"train": [shard], "valid": [shard], "seq_len": 128},
        "train": {"steps": 1, "global_batch": 16, "micro_batch": 8},
        "eval": {"batches": 12},
        "backend": {"device": "cpu"},
    })

    def val_loss(d):
        if not os.path.exists(os.path.join(d, "metrics.jsonl")):
            return []
        return [r["val_loss"] for r in pclib.metrics(d) if "val_loss" in r]

    d = os.path.join(root, "eval-ref")
    t0 = time.time()
    run_ok(2, job, d)
    full_s = time.time() - t0
    ref = val_loss(d)
    pclib.check(len(ref) == 1, f"eval: one validation loss ({ref})")

    def signalled(tag, sig, to_ranks):
        d = os.path.join(root, tag)
        p = start(2, job, d)
        kids = ranks_of(p, 2)
        logs = [os.path.join(d, "logs", f"rank-{i:05d}.log") for i in range(2)]
        # a rank log exists once its rank has opened the run (signals are set up by then)
        pclib.check(wait_for(lambda: all(map(os.path.exists, logs)), 60, p), f"{tag}: both ranks start")
        pclib.check(p.poll() is None, f"{tag}: the eval is still running when signalled")
        t0 = time.time()
        for k in (kids if to_ranks else [p.pid]):
            os.kill(k, sig)
        wait_for(lambda: not any(map(running, kids)), 60)
        ranks_s = time.time() - t0  # until the ranks have ended (mpirun cleans up after)
        rc, out = finish(p)
        return d, rc, out, ranks_s

    d, rc, out, _ = signalled("eval-usr1", signal.SIGUSR1, False)
    pclib.check(rc == 0, f"eval: SIGUSR1 is ignored, the run finishes (exit {rc}):\n{out[-2000:]}")
    pclib.check(val_loss(d) == ref, f"eval: after SIGUSR1 the uninterrupted loss ({val_loss(d)} vs {ref})")
    d, rc, out, stop_s = signalled("eval-term", signal.SIGTERM, True)
    pclib.check(rc not in (0, 3), f"eval: SIGTERM ends the run as a failure, not a stop to resume (exit {rc})")
    pclib.check(stop_s < full_s / 2, f"eval: SIGTERM ends it at once ({stop_s:.2f} s; the whole eval {full_s:.2f} s)")
    pclib.check(val_loss(d) == [] and not os.path.exists(os.path.join(d, "checkpoints", "latest")),
                "eval: no result and no checkpoint after SIGTERM")


def kill_trial(job, root, ref, i, rng, run_s):
    d = os.path.join(root, f"kill-{i}")
    how = ["all", "one", "all-in-write", "one-in-write"][i % 4]
    p = start(2, job, d)
    kids = ranks_of(p, 2)
    ck = os.path.join(d, "checkpoints")
    if how.endswith("in-write"):
        n_skip = rng.randint(0, 6)  # the n-th checkpoint's temporary directory
        seen = set()

        def tmp_appears():
            try:
                for n in os.listdir(ck):
                    if ".tmp-" in n and n not in seen:
                        seen.add(n)
            except OSError:
                pass
            return len(seen) > n_skip
        wait_for(tmp_appears, 60, p)
        time.sleep(rng.uniform(0, 0.02))
    else:
        time.sleep(rng.uniform(0.05, 0.95) * run_s)
    victims = kids if how.startswith("all") else [rng.choice(kids)] if kids else []
    for k in victims:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    rc, _ = finish(p)
    for k in kids:  # nothing may outlive its job
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    lt = latest(d)
    if lt is not None:
        v = tool("verify", os.path.join(ck, lt))
        if v.returncode != 0:
            raise SystemExit(f"FAIL: trial {i} ({how}): latest -> {lt} does not verify: {v.stdout}")
    found = tool("find", ck).stdout.strip() if os.path.isdir(ck) else "none"
    out = run_ok(2, job, d)
    same = bitwise(final(d), ref)
    state = "finished before the kill" if rc == 0 else f"killed (mpirun {rc})"
    print(f"trial {i}: kill -9 {how}: {state}, latest {lt}, resumed from {found}: "
          f"{'bitwise equal' if same else 'DIFFERENT'}")
    if not same:
        raise SystemExit(f"FAIL: trial {i}: final weights differ from the uninterrupted run\n{out[-2000:]}")
    return rc != 0, lt


def main():
    root = pclib.tmpdir("pc-ckpt-")
    bdir, _ = pclib.tiny_base(root, 5, V, D, F, L, head_dim=8, tied=True)
    pclib.markov_shards(root, V, 4500, 500, seed=2)
    job = pclib.compress_job(
        root, bdir, 11, SEQ,
        {"d_model": DC, "d_ff": FC, "importance": "activation", "calibration_sequences": 8},
        {"steps": STEPS, "global_batch": 4, "micro_batch": 1, "lr": 3e-3, "warmup_steps": 2},
        checkpoint={"every_steps": 1, "keep": 2}, eval={"batches": 2}, backend={"device": "cpu"})

    # uninterrupted references
    refs = {}
    run_s = 0.0
    for np_, mode in [(2, "compress"), (4, "compress"), (2, "prune")]:
        d = os.path.join(root, f"ref-{mode}-np{np_}")
        t0 = time.time()
        run_ok(np_, job, d, f"run.mode={mode}")
        if (mode, np_) == ("compress", 2):
            run_s = time.time() - t0
        refs[(mode, np_)] = final(d)
    pclib.check(max_rel(refs[("compress", 4)], refs[("compress", 2)]) < 1e-5, "references on 2 and 4 ranks agree")
    # prune's state, the same on every rank, is written by both ranks in parallel (dealt out
    # the largest tensor first), not by rank 0 alone while the other waits
    mb = [float(re.findall(r"\(([0-9.e+-]+) MB from this rank\)",
                           open(os.path.join(root, "ref-prune-np2", "logs", f"rank-{k:05d}.log")).read())[-1])
          for k in range(2)]
    pclib.check(min(mb) > 0 and max(mb) < 2 * min(mb), f"prune: both ranks write the checkpoint ({mb} MB)")
    last = f"step-{STEPS:07d}"
    pclib.check(latest(os.path.join(root, "ref-compress-np2")) == last, f"a checkpoint after the last step ({last})")

    # checkpoint.at_end false: the periodic ones only, none after the last step even
    # where every_steps falls on it; the same weights
    d = os.path.join(root, "no-end")
    run_ok(2, job, d, "checkpoint.at_end=false", "checkpoint.every_steps=4", "checkpoint.keep=5")
    names = checkpoints(d)
    pclib.check(names == ["step-0000004", "step-0000008"] and latest(d) == "step-0000008",
                f"at_end false, every 4 of {STEPS} steps: checkpoints {names}, latest {latest(d)}")
    pclib.check(bitwise(final(d), refs[("compress", 2)]), "at_end false: the uninterrupted run's final weights")
    d = os.path.join(root, "no-end-5")
    run_ok(2, job, d, "checkpoint.at_end=false", "checkpoint.every_steps=5", "checkpoint.keep=5")
    names = checkpoints(d)
    pclib.check(names == ["step-0000005"], f"at_end false, every 5 of {STEPS} steps: checkpoints {names}")

    # SIGTERM (and SIGINT, Ctrl-C's) to every rank, resume with the same command: bitwise
    for mode, sig in [("compress", signal.SIGTERM), ("prune", signal.SIGTERM), ("compress", signal.SIGINT)]:
        got = stop_and_resume(job, root, f"{sig.name.lower()}-{mode}", 2, 2, sig, True, f"run.mode={mode}")
        pclib.check(bitwise(got, refs[(mode, 2)]),
                    f"{mode}: {sig.name} + resume gives bitwise the uninterrupted weights")

    eval_signals(root)
    resume_guards(job, root, os.path.join(root, "ref-compress-np2"))

    # other rank counts: 4 -> 2 and 2 -> 4 (SIGUSR1 through mpirun, as Slurm's warning);
    # prune 4 -> 2: its state written by 4 ranks is read by 2, each its share, and sent
    for mode, a, b in [("compress", 4, 2), ("compress", 2, 4), ("prune", 4, 2)]:
        got = stop_and_resume(job, root, f"{mode}-np{a}to{b}", a, b, signal.SIGUSR1, False, f"run.mode={mode}")
        rel = max_rel(got, refs[(mode, b)])
        pclib.check(rel < 1e-5, f"{mode}: started on {a} ranks, resumed on {b}: final within 1e-5 relative "
                                f"({rel:.2e})")

    # a plan that splits matrices (row and column ranges of A, shared factors): the
    # pieces written by 4 ranks are reassembled for 2 and the reverse
    split = "compress.split_mb=0.002"
    run_ok(2, job, os.path.join(root, "ref-split-np2"), split)
    ref_split = final(os.path.join(root, "ref-split-np2"))
    pclib.check(max_rel(ref_split, refs[("compress", 2)]) < 1e-5, "split plan: same result as the unsplit one")
    for a, b in [(4, 2), (2, 4)]:
        got = stop_and_resume(job, root, f"split-np{a}to{b}", a, b, signal.SIGUSR1, False, split)
        d = os.path.join(root, f"split-np{a}to{b}")
        names = "".join(open(os.path.join(d, "checkpoints", n, "MANIFEST")).read() for n in checkpoints(d))
        pclib.check(".a[" in names, f"split {a}->{b}: the checkpoint holds row/column pieces of A")
        rel = max_rel(got, ref_split)
        pclib.check(rel < 1e-5, f"split plan: started on {a} ranks, resumed on {b}: within 1e-5 ({rel:.2e})")

    # where d_model keeps the base's width the plan still cuts the embedding, q, k, v and
    # lm_head by rows and o_proj by columns (their kept sides), with no projection on the
    # other: those pieces of A are reassembled too (2 ranks -> 1), and cut from a whole A
    # (1 -> 2)
    keep_d = f"compress.d_model={D}"
    d = os.path.join(root, "ref-keepd-np2")
    run_ok(2, job, d, split, keep_d)
    names = "".join(open(os.path.join(d, "checkpoints", n, "MANIFEST")).read() for n in checkpoints(d))
    pclib.check("model.embed_tokens.weight.a[" in names, "d_model kept, 2 ranks: the embedding's A in row pieces")
    for a, b in [(2, 1), (1, 2)]:
        rel = max_rel(stop_and_resume(job, root, f"keepd-np{a}to{b}", a, b, signal.SIGUSR1, False, split, keep_d),
                      final(d))
        pclib.check(rel < 1e-5, f"d_model kept: started on {a} rank(s), resumed on {b}: within 1e-5 ({rel:.2e})")

    # kill -9 trials
    rng = random.Random(int(os.environ.get("PC_CKPT_SEED", "1234")))
    killed = 0
    for i in range(TRIALS):
        k, _ = kill_trial(job, root, refs[("compress", 2)], i, rng, run_s)
        killed += k
    pclib.check(killed >= TRIALS // 2, f"{killed} of {TRIALS} trials killed a running job and resumed bitwise")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        main()
    finally:
        cleanup()
