"""test_optim: AdamW, the lr schedule and gradient clipping against torch / NumPy.

optim_check runs S AdamW steps on two segments (with and without weight decay), with
lr from optim_lr and the clip factor of each step's global gradient norm. The same is
done with torch.optim.AdamW (two param groups) and torch.nn.utils.clip_grad_norm_, with
the lr computed by the NumPy formula below. Tolerances:
  parameters: max|c - torch| <= PARAM_TOL * max|torch|
  clip factors and lr values: relative PARAM_TOL / SCHED_TOL
"""
import math
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    from safetensors.numpy import load_file, save_file
except ImportError as exc:  # pragma: no cover
    print("skip: %s" % exc)
    sys.exit(77)

PARAM_TOL = 1e-6
SCHED_TOL = 1e-6

BUILD = os.environ.get("PC_BUILD", "build")
TOOL = os.path.join(BUILD, "tests", "model", "optim_check")
failures = []


def check(ok, msg):
    print(("ok   " if ok else "FAIL ") + msg)
    if not ok:
        failures.append(msg)


def lr_ref(step, total, warmup, lr, ratio):
    """Linear warmup 0.1*lr -> lr over warmup steps, cosine to ratio*lr at step total-1;
    the step after warmup is at lr (the peak, reached after warmup), also when it is the last."""
    if step < warmup:
        return lr * (0.1 + 0.9 * step / warmup)
    span = total - 1 - warmup
    p = min(1.0, (step - warmup) / span) if span > 0 else 0.0
    return ratio * lr + (lr - ratio * lr) * 0.5 * (1 + math.cos(math.pi * p))


def run(tmp, p1, p2, grads, lr, warmup, ratio, b1, b2, eps, wd, max_norm, sched):
    fin = os.path.join(tmp, "in.safetensors")
    fout = os.path.join(tmp, "out.safetensors")
    save_file({"p_decay": p1, "p_nodecay": p2, "grads": grads}, fin)
    args = [TOOL, fin, fout] + [repr(x) for x in (lr, warmup, ratio, b1, b2, eps, wd, max_norm, sched)]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("optim_check failed: %s" % r.stderr)
    return load_file(fout)


def torch_ref(p1, p2, grads, lr, warmup, ratio, b1, b2, eps, wd, max_norm):
    t1 = torch.nn.Parameter(torch.from_numpy(p1.copy()))
    t2 = torch.nn.Parameter(torch.from_numpy(p2.copy()))
    opt = torch.optim.AdamW([{"params": [t1], "weight_decay": wd}, {"params": [t2], "weight_decay": 0.0}],
                            lr=lr, betas=(b1, b2), eps=eps)
    S, n1 = grads.shape[0], p1.size
    clips = []
    for s in range(S):
        t1.grad = torch.from_numpy(grads[s, :n1].copy())
        t2.grad = torch.from_numpy(grads[s, n1:].copy())
        norm = float(torch.nn.utils.clip_grad_norm_([t1, t2], max_norm))
        clips.append(min(1.0, max_norm / (norm + 1e-6)))
        for g in opt.param_groups:
            g["lr"] = lr_ref(s, S, warmup, lr, ratio)
        opt.step()
    return t1.detach().numpy(), t2.detach().numpy(), np.array(clips)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main():
    if not os.path.exists(TOOL):
        print("optim_check not built at %s" % TOOL)
        return 1
    g = np.random.default_rng(3)
    n1, n2, S = 37, 11, 8
    p1 = g.normal(0, 1, n1).astype(np.float32)
    p2 = (1 + 0.1 * g.normal(0, 1, n2)).astype(np.float32)
    # gradient norms spread around max_norm so some steps are clipped and some are not
    scales = np.array([0.05, 0.3, 2.0, 0.1, 5.0, 0.2, 1.5, 0.02], np.float32)[:, None]
    grads = (g.normal(0, 1, (S, n1 + n2)) * scales / math.sqrt(n1 + n2)).astype(np.float32)
    hp = dict(lr=3e-2, warmup=3, ratio=0.1, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, max_norm=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        out = run(tmp, p1, p2, grads, sched=50, **hp)
    r1, r2, clips = torch_ref(p1, p2, grads, **hp)
    check(np.any(clips < 1) and np.any(clips == 1), "test covers clipped and unclipped steps")
    e = rel(out["clip"], clips.astype(np.float32))
    check(e <= PARAM_TOL, "clip factors rel err %.2e <= %.0e" % (e, PARAM_TOL))
    e = rel(out["p_decay"], r1)
    check(e <= PARAM_TOL, "decayed params vs torch AdamW rel err %.2e <= %.0e" % (e, PARAM_TOL))
    e = rel(out["p_nodecay"], r2)
    check(e <= PARAM_TOL, "undecayed params vs torch AdamW rel err %.2e <= %.0e" % (e, PARAM_TOL))
    moved = float(np.max(np.abs(out["p_decay"] - p1)))
    check(moved > 1e-3, "parameters moved (%.3g)" % moved)

    ref = np.array([lr_ref(s, 50, hp["warmup"], hp["lr"], hp["ratio"]) for s in range(50)], np.float32)
    e = rel(out["lr"], ref)
    check(e <= SCHED_TOL, "lr schedule rel err %.2e <= %.0e" % (e, SCHED_TOL))
    lr = out["lr"]
    check(abs(lr[0] - 0.1 * hp["lr"]) <= 1e-7 and abs(lr[3] - hp["lr"]) <= 1e-7
          and abs(lr[-1] - hp["ratio"] * hp["lr"]) <= 1e-7,
          "schedule endpoints: %.4g (0.1 lr), %.4g (lr at warmup), %.4g (min at last step)" % (lr[0], lr[3], lr[-1]))
    check(bool(np.all(np.diff(lr[:4]) > 0) and np.all(np.diff(lr[3:]) < 0)), "warmup rises, cosine falls")
    # one step after warmup (steps = warmup + 1, and a one-step run): that step is at the peak
    for warm, total in ((3, 4), (0, 1)):
        with tempfile.TemporaryDirectory() as tmp:
            lr2 = run(tmp, p1, p2, grads, sched=total, **dict(hp, warmup=warm))["lr"]
        ref2 = [lr_ref(s, total, warm, hp["lr"], hp["ratio"]) for s in range(total)]
        check(abs(lr2[-1] - hp["lr"]) <= 1e-7 and rel(lr2, np.array(ref2, np.float32)) <= SCHED_TOL,
              "warmup %d of %d steps: lr %s, the last at the peak %.4g" % (warm, total, list(lr2), hp["lr"]))
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
