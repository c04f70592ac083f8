"""pretrain mode end to end: text -> projcomp-data shards -> projcompd under
mpirun -np 1, 2 and 4 with the same global batch. The loss curves must agree within
fp32 reduction tolerance (1e-4 relative), the same command twice must be bitwise
identical, the loss must fall, and the saved model must load in stock transformers and
give the validation loss projcompd reported (2e-5 relative). Each step's tflops metric
is the FLOPs counted from the output model's shape at its tokens/s, and with
backend.peak_tflops (4 ranks) its mfu that over the ranks' peaks; without it no mfu. The
progress line and the step's log line show the mfu, and the end of training's summary
gives the median step time of steps 2-12 and its tokens/s and mfu. A rank runs no more
BLAS threads than the CPUs it may run on."""
import json
import os
import random
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

SEQ = 32


def corpus(path):
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "the", "of", "and", "model", "rank", "tensor", "shard"]
    with open(path, "w") as f:
        for _ in range(300):
            f.write(" ".join(rng.choice(words) for _ in range(rng.randint(5, 25))) + ".\n\n")


def main():
    root = pclib.tmpdir("pc-pretrain-")
    corpus(os.path.join(root, "c.txt"))
    pclib.run([pclib.PROJCOMP_DATA, "--out", os.path.join(root, "data"), "--valid-fraction", "0.1",
               os.path.join(root, "c.txt")])
    mcfg = os.path.join(root, "model.json")
    with open(mcfg, "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 258,
                   "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                   "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                   "tie_word_embeddings": False}, f)
    job = os.path.join(root, "job.yaml")
    pclib.write_yaml(job, {
        "run": {"dir": os.path.join(root, "unset"), "mode": "pretrain", "seed": 5},
        "model": {"config": mcfg},
        "data": {"train": [os.path.join(root, "data", "train-*.h5")],
                 "valid": [os.path.join(root, "data", "valid-*.h5")], "seq_len": SEQ},
        "train": {"steps": 12, "global_batch": 8, "micro_batch": 1, "lr": 1e-2, "warmup_steps": 2},
        "eval": {"every_steps": 6, "batches": 6},
        "backend": {"device": "cpu"},
    })

    curves, progress = {}, {}
    for np_, tag in [(1, "np1"), (2, "np2"), (2, "np2b"), (4, "np4")]:
        d = os.path.join(root, tag)
        out = pclib.projcompd(np_, job, f"run.dir={d}", *(["backend.peak_tflops=0.5"] if np_ == 4 else []))
        progress[tag] = out.stdout + out.stderr
        curves[tag] = [m["loss"] for m in pclib.metrics(d) if "loss" in m]
    base = np.array(curves["np1"])
    pclib.check(len(base) == 12, f"12 steps logged ({len(base)})")
    pclib.check(base[-1] < base[0] - 0.5, f"loss falls: {base[0]:.4f} -> {base[-1]:.4f}")
    for tag in ["np2", "np4"]:
        rel = np.max(np.abs(np.array(curves[tag]) - base) / np.abs(base))
        pclib.check(rel < 1e-4, f"{tag} loss curve equals np1 within 1e-4 (max rel {rel:.2e})")
    # the tflops and mfu metrics against FLOPs counted from the output model
    pclib.check_flops_metrics(os.path.join(root, "np1"), 1, SEQ, 8)
    pclib.check_flops_metrics(os.path.join(root, "np4"), 4, SEQ, 8, peak=0.5)
    last = [m for m in pclib.metrics(os.path.join(root, "np4")) if "mfu" in m][-1]
    shown = f"{100 * last['mfu']:.1f}%"
    pclib.check(re.search(r"step 12/12  loss [\d.]+  \d+ tok/s  mfu " + re.escape(shown), progress["np4"]),
                f"np4: the progress line shows the last step's mfu ({shown})")
    pclib.check(re.search(r"step 12 INFO loss .* s, mfu " + re.escape(shown) + ", comm",
                          open(os.path.join(root, "np4", "logs", "rank-00000.log")).read()),
                f"np4: the step's log line shows its mfu ({shown})")
    pclib.check(" mfu " not in progress["np1"], "np1: no mfu on the progress line without a peak")
    # the end of training's summary: the median step time of steps 2-12 (the first left out)
    steps = [m for m in pclib.metrics(os.path.join(root, "np4")) if "step_time" in m]
    med = float(np.median([m["step_time"] for m in steps[1:]]))
    m = re.search(r"steps 2-12: median ([\d.]+) s a step \(this process's first step left out\), (\d+) tok/s, "
                  r"([\d.e+-]+) TFLOP/s, mfu ([\d.]+)%", open(os.path.join(root, "np4", "logs", "rank-00000.log")).read())
    pclib.check(m is not None and abs(float(m.group(1)) - med) <= 5e-5 + 1e-3 * med and
                abs(int(m.group(2)) - 8 * SEQ / float(m.group(1))) <= 1e-3 * int(m.group(2)) + 1 and
                abs(float(m.group(4)) - 100 * float(m.group(3)) / (4 * 0.5)) <= 0.06,
                f"np4: the summary's median step {m.group(1) if m else None} s is the metrics' {med:.4f} s, and its "
                f"tok/s and mfu follow ({m.group(0) if m else 'no summary line'})")
    same = curves["np2"] == curves["np2b"]
    pclib.check(same, "same command twice: identical loss curve")
    a = open(os.path.join(root, "np2", "final", "model.safetensors"), "rb").read()
    b = open(os.path.join(root, "np2b", "final", "model.safetensors"), "rb").read()
    pclib.check(a == b, "same command twice: bitwise identical final weights")

    # the output loads in transformers and gives projcompd's validation loss
    final = os.path.join(root, "np2", "final")
    val = [m["val_loss"] for m in pclib.metrics(os.path.join(root, "np2")) if "val_loss" in m][-1]
    import h5py
    toks = np.concatenate([h5py.File(os.path.join(root, "data", n))["tokens"][:].astype(np.int64)
                           for n in sorted(os.listdir(os.path.join(root, "data"))) if n.startswith("valid")])
    n_win = min(6, (len(toks) - 1) // SEQ)
    ref = pclib.hf_val_loss(final, toks, SEQ, n_win)
    rel = abs(ref - val) / ref
    pclib.check(rel < 2e-5, f"transformers loads the output: val loss {ref:.6f} vs projcompd {val:.6f} (rel {rel:.1e})")
    threads(job, root)


def threads(job, root):
    """backend.threads 0: the node's cores shared by its ranks, no more than the CPUs the
    rank may run on (one CPU here, by taskset; all the process may use, unbound)."""
    mine = len(os.sched_getaffinity(0))
    for cpus, want in [([0], 1), (None, min(os.sysconf("SC_NPROCESSORS_ONLN"), mine))]:
        d = os.path.join(root, f"threads-{want}")
        args = ["mpirun", "--bind-to", "none", "-np", "1", pclib.PROJCOMPD, "--cfg", job, "--set", f"run.dir={d}",
                "--set", "train.steps=1"]
        if cpus:
            args = ["taskset", "-c", ",".join(map(str, sorted(os.sched_getaffinity(0))[:1]))] + args
        pclib.run(args)
        log = open(os.path.join(d, "logs", "rank-00000.log")).read()
        pclib.check(f", {want} thread(s)" in log, f"{'one CPU' if cpus else 'unbound'}: {want} thread(s) a rank")


if __name__ == "__main__":
    main()
