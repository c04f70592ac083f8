"""Distillation loss and gradient against torch autograd, then end to end.

distill_check runs the CPU backend's fused op on random student/teacher logits; the
reference is (1-a) CE + a T^2 KL(softmax(t/T) || softmax(z/T)) summed over valid rows,
differentiated by autograd (float64). Tolerances: loss 1e-5 relative, gradient 1e-5 x
max|ref|. Then prune and compress with distill (alpha 0.5, T 2) run on 2 ranks: the first
step's training loss must equal the same formula evaluated by transformers (teacher =
the base, student = the hard-pruned model written by a steps-0 run) on the windows that
step read (the sampler re-implemented in pclib), to 2e-5 relative. Again from a base saved
in bf16 with model.dtype bf16, where the teacher holds its matrices in bf16 only and its
products take bf16 operands: against the formula with such a teacher, to 2e-6, and
closer to it than to the fp32 teacher's."""
import contextlib
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def op_case(root, alpha, T):
    rng = np.random.default_rng(1)
    N, V = 7, 33
    z = rng.normal(0, 2, (N, V)).astype(np.float32)
    t = rng.normal(0, 2, (N, V)).astype(np.float32)
    y = rng.integers(0, V, N).astype(np.float32)
    y[2] = -1
    inp, out = os.path.join(root, "in.st"), os.path.join(root, "out.st")
    save_file({"student": z, "teacher": t, "targets": y}, inp)
    scale = 0.25
    pclib.run([os.path.join(pclib.BUILD, "tests", "compress", "distill_check"), inp, out, str(alpha), str(T),
               str(scale)])
    got = load_file(out)
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(t, dtype=torch.float64)
    valid = torch.tensor(y >= 0)
    yy = torch.tensor(np.where(y >= 0, y, 0).astype(np.int64))
    ce = torch.nn.functional.cross_entropy(zt, yy, reduction="none")
    kl = (torch.softmax(tt / T, -1) * (torch.log_softmax(tt / T, -1) - torch.log_softmax(zt / T, -1))).sum(-1)
    loss = (((1 - alpha) * ce + alpha * T * T * kl) * valid).sum()
    (loss * scale).backward()
    rel = abs(float(got["loss_sum"][0]) - loss.item()) / loss.item()
    pclib.check(rel < 1e-5, f"alpha {alpha} T {T}: loss {got['loss_sum'][0]:.6f} vs torch {loss.item():.6f}")
    g = zt.grad.numpy()
    err = np.max(np.abs(got["dlogits"] - g)) / np.max(np.abs(g))
    pclib.check(err < 1e-5, f"alpha {alpha} T {T}: gradient matches autograd (rel {err:.1e})")


def formula(student, teacher, toks, seed, seq, alpha, T, teacher_bf16=False):
    """The first step's mean distillation loss by transformers over the windows that step
    read (4 samples of step 0); the teacher's products from bf16 operands if asked."""
    losses = []
    with torch.no_grad():
        for sample in range(4):
            off = pclib.sample_offset(seed, 0, sample, len(toks), seq)
            w = torch.tensor(toks[off:off + seq + 1])
            z = student(w[None, :-1]).logits[0].double()
            with pclib.bf16_products() if teacher_bf16 else contextlib.nullcontext():
                t = teacher(w[None, :-1]).logits[0].double()
            ce = torch.nn.functional.cross_entropy(z, w[1:])
            kl = (torch.softmax(t / T, -1) * (torch.log_softmax(t / T, -1) - torch.log_softmax(z / T, -1))).sum(-1)
            losses.append(((1 - alpha) * ce + alpha * T * T * kl.mean()).item())
    return float(np.mean(losses))


def e2e(root, bf16):
    """Prune and compress with distillation on 2 ranks: the first loss against the formula.
    bf16: a base saved in bf16 and model.dtype bf16, so the teacher holds its matrices in
    bf16 only and its products take bf16 operands; the formula's teacher does the same."""
    from transformers import LlamaForCausalLM
    V, SEQ, SEED, ALPHA, T = 90, 16, 21, 0.5, 2.0
    sub = os.path.join(root, "bf16" if bf16 else "f32")
    os.makedirs(sub)
    bdir, model = pclib.tiny_base(sub, 8, V, 64, 128, 2, tied=True)
    if bf16:
        bdir = os.path.join(sub, "base-bf16")
        model.to(torch.bfloat16).save_pretrained(bdir, safe_serialization=True)
    toks = pclib.markov_tokens(3000, V, seed=4)
    pclib.write_shard(os.path.join(sub, "train.h5"), toks, V)
    job = os.path.join(sub, "job.yaml")
    pclib.write_yaml(job, {
        "run": {"dir": os.path.join(sub, "unset"), "mode": "prune", "seed": SEED},
        "model": {"base": bdir, "dtype": "bf16" if bf16 else "f32"},
        "compress": {"d_model": 40, "d_ff": 72, "importance": "magnitude"},
        "distill": {"alpha": ALPHA, "temperature": T},
        "data": {"train": [os.path.join(sub, "train.h5")], "seq_len": SEQ},
        "train": {"steps": 1, "global_batch": 4, "micro_batch": 2},
        "checkpoint": {"every_steps": 0},
        "backend": {"device": "cpu"},
    })
    s0 = os.path.join(sub, "s0")
    pclib.projcompd(1, job, f"run.dir={s0}", "train.steps=0")
    teacher = LlamaForCausalLM.from_pretrained(bdir, torch_dtype=torch.float32, attn_implementation="eager").eval()
    student = LlamaForCausalLM.from_pretrained(os.path.join(s0, "final"), torch_dtype=torch.float32,
                                               attn_implementation="eager").eval()
    ref = formula(student, teacher, toks, SEED, SEQ, ALPHA, T, teacher_bf16=bf16)
    tol = 2e-6 if bf16 else 2e-5  # bf16: tighter than the fp32 teacher's distance (about 1.3e-5 here)
    for mode in ["prune", "compress"]:
        d = os.path.join(sub, mode)
        pclib.projcompd(2, job, f"run.dir={d}", f"run.mode={mode}")
        got = [m["loss"] for m in pclib.metrics(d) if "loss" in m][0]
        rel = abs(got - ref) / ref
        what = f"{mode}{' bf16 teacher' if bf16 else ''}"
        pclib.check(rel < tol, f"{what}: first distillation loss {got:.6f} vs transformers {ref:.6f} (rel {rel:.1e})")
        log = open(os.path.join(d, "logs", "rank-00001.log")).read()
        pclib.check(f"distillation from the base ({'bf16' if bf16 else 'fp32'} weights)" in log,
                    f"{what}: the teacher's weights are {'bf16' if bf16 else 'fp32'}")
        if bf16:  # the fp32 teacher's formula is farther: the bf16 products are what ran
            ref32 = formula(student, teacher, toks, SEED, SEQ, ALPHA, T)
            pclib.check(abs(got - ref) < abs(got - ref32),
                        f"{what}: {abs(got - ref):.1e} from the bf16 teacher's formula, {abs(got - ref32):.1e} from fp32's")


def main():
    root = pclib.tmpdir("pc-distill-")
    for alpha, T in [(0.5, 1.0), (0.3, 2.0), (1.0, 0.5), (0.0, 1.0)]:
        op_case(root, alpha, T)
    e2e(root, bf16=False)
    e2e(root, bf16=True)


if __name__ == "__main__":
    main()
