"""Importance scores against independent references.

activation: run.mode importance on 2 ranks (5 calibration windows, micro-batch 2, so a
short last batch) streams the base one layer at a time; its importance.txt scores must
equal sums of |input_layernorm| + |post_attention_layernorm| outputs (d_model) and
|gate_proj| + |up_proj| outputs (d_ff, per layer) that forward hooks on stock
transformers collect over the same windows (the sampler re-implemented in pclib,
pseudo-step -1): max |diff| <= 1e-4 x max |ref|. magnitude: the L2-norm sums
(docs/guide.md, Concepts) computed with NumPy, same tolerance. The kept indices are the top-k,
and every dimension where the job sets no widths. The same scores on 7 ranks, two of
them without a window."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

V, D, F, L, SEQ, N_CAL, SEED = 80, 48, 96, 3, 12, 5, 17


def read_scores(path):
    out = {}
    for line in open(path):
        if line.startswith("#"):
            continue
        k, *v = line.split()
        out[k] = np.array([float(x) for x in v])
    return out


def close(got, ref, what):
    err = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
    pclib.check(err < 1e-4, f"{what}: matches the reference (rel {err:.1e})")


def main():
    root = pclib.tmpdir("pc-imp-")
    bdir, base = pclib.tiny_base(root, 6, V, D, F, L, tied=True, head_dim=12)
    toks = pclib.markov_tokens(3000, V, seed=5)
    pclib.write_shard(os.path.join(root, "train.h5"), toks, V)
    job = os.path.join(root, "job.yaml")
    pclib.write_yaml(job, {
        "run": {"dir": os.path.join(root, "unset"), "mode": "importance", "seed": SEED},
        "model": {"base": bdir},
        "compress": {"d_model": 32, "d_ff": 64, "importance": "activation", "calibration_sequences": N_CAL},
        "data": {"train": [os.path.join(root, "train.h5")], "seq_len": SEQ},
        "train": {"global_batch": 4, "micro_batch": 2},
        "backend": {"device": "cpu"},
    })

    d = os.path.join(root, "act")
    pclib.projcompd(2, job, f"run.dir={d}")
    got = read_scores(os.path.join(d, "importance.txt"))
    ref_d = np.zeros(D)
    ref_ff = [np.zeros(F) for _ in range(L)]
    hooks = []
    base = base.float().eval()
    base.config._attn_implementation = "eager"
    for li, layer in enumerate(base.model.layers):
        def add_d(mod, inp, out):
            ref_d[:] += out[0].abs().sum(0).double().numpy()

        def add_ff(mod, inp, out, li=li):
            ref_ff[li][:] += out[0].abs().sum(0).double().numpy()
        hooks += [layer.input_layernorm.register_forward_hook(add_d),
                  layer.post_attention_layernorm.register_forward_hook(add_d),
                  layer.mlp.gate_proj.register_forward_hook(add_ff),
                  layer.mlp.up_proj.register_forward_hook(add_ff)]
    with torch.no_grad():
        for w in range(N_CAL):
            off = pclib.sample_offset(SEED, -1 & pclib.MASK, w, len(toks), SEQ)
            base(torch.tensor(toks[off:off + SEQ])[None])
    close(got["d_model.scores"], ref_d, "activation d_model scores")
    for li in range(L):
        close(got[f"d_ff.{li}.scores"], ref_ff[li], f"activation d_ff scores of layer {li}")
    kept = sorted(np.argsort(-ref_d, kind="stable")[:32])
    pclib.check(list(got["d_model.kept"].astype(int)) == list(kept), "activation: kept = top-32 of the reference")
    # on more ranks than windows (7 for 5: ranks 5 and 6 read no layer, joining each
    # layer's agreement): the same scores
    d7 = os.path.join(root, "act-np7")
    pclib.projcompd(7, job, f"run.dir={d7}", "train.global_batch=14")
    got7 = read_scores(os.path.join(d7, "importance.txt"))
    close(got7["d_model.scores"], ref_d, "activation on 7 ranks for 5 windows: d_model scores")
    for li in range(L):
        close(got7[f"d_ff.{li}.scores"], ref_ff[li], f"activation on 7 ranks for 5 windows: d_ff scores of layer {li}")

    d = os.path.join(root, "mag")
    pclib.projcompd(1, job, f"run.dir={d}", "compress.importance=magnitude")
    got = read_scores(os.path.join(d, "importance.txt"))
    sd = {k: v.double().numpy() for k, v in base.state_dict().items()}
    ref_d = np.zeros(D)
    for li in range(L):
        p = f"model.layers.{li}."
        for n in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"]:
            ref_d += np.linalg.norm(sd[p + n + ".weight"], axis=0)
        for n in ["self_attn.o_proj", "mlp.down_proj"]:
            ref_d += np.linalg.norm(sd[p + n + ".weight"], axis=1)
        ref_f = (np.linalg.norm(sd[p + "mlp.gate_proj.weight"], axis=1) + np.linalg.norm(sd[p + "mlp.up_proj.weight"], axis=1)
                 + np.linalg.norm(sd[p + "mlp.down_proj.weight"], axis=0))
        close(got[f"d_ff.{li}.scores"], ref_f, f"magnitude d_ff scores of layer {li}")
    close(got["d_model.scores"], ref_d, "magnitude d_model scores")
    # on 3 ranks (each reads one of the 3 layers):
    # the same scores, bit for bit, and the same file
    d3 = os.path.join(root, "mag-np3")
    pclib.projcompd(3, job, f"run.dir={d3}", "compress.importance=magnitude", "train.global_batch=6")
    pclib.check(open(os.path.join(d3, "importance.txt")).read() == open(os.path.join(d, "importance.txt")).read(),
                "magnitude on 3 ranks, each reading a share of the layers: importance.txt as on 1 rank")

    # importance mode without widths: the same scores, every dimension kept (compress.d_model
    # unset keeps the base's hidden_size as compress.d_ff [] keeps its widths)
    d = os.path.join(root, "all")
    pclib.projcompd(1, job, f"run.dir={d}", "compress.importance=magnitude", "compress.d_model=0", "compress.d_ff=[]")
    got_all = read_scores(os.path.join(d, "importance.txt"))
    close(got_all["d_model.scores"], ref_d, "unset widths: magnitude d_model scores")
    pclib.check(list(got_all["d_model.kept"].astype(int)) == list(range(D)), "unset compress.d_model: all kept")
    pclib.check(all(list(got_all[f"d_ff.{li}.kept"].astype(int)) == list(range(F)) for li in range(L)),
                "unset compress.d_ff: every layer's dimensions kept")


if __name__ == "__main__":
    main()
