"""compress and prune modes end to end on a tiny tied GQA base made by transformers.

- steps 0: the fused output equals the base sliced at the indices saved in
  importance.txt, bit for bit in f32 (activation and magnitude scoring), and prune's
  steps-0 output is the same file content.
- a short compress run and a short prune run: the outputs load in stock transformers
  and give the validation loss projcompd reported (2e-5 relative); both start from the
  same step-0 validation loss (the hard-pruned model); training lowers the loss.
- the untied output config has the new widths and an explicit head_dim.
- compress.store_grads (one gradient pass, more memory) gives bitwise the same result.
- per-layer d_ff ([56, 72]): the output stores the narrower layer zero-padded to
  intermediate_size 72 (exact: zero neurons contribute nothing), stock transformers loads
  it and gives projcompd's validation loss, and projcompd's eval mode reads it back, as
  do compress and prune (magnitude and activation scoring, matrices cut into blocks):
  kept whole, their step-0 loss is its loss."""
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

V, D, F, L, DC, FC, SEQ = 120, 64, 128, 2, 40, 72, 16


def kept(path):
    out = {}
    for line in open(path):
        if ".kept" in line:
            k, *v = line.split()
            out[k[:-5]] = np.array([int(x) for x in v])
    return out


def main():
    root = pclib.tmpdir("pc-compress-")
    bdir, base = pclib.tiny_base(root, 3, V, D, F, L, tied=True)
    sd = {k: v.numpy() for k, v in base.state_dict().items()}
    _, _, toks = pclib.markov_shards(root, V, 5000, 1000, seed=1)
    job = pclib.compress_job(
        root, bdir, 9, SEQ,
        {"d_model": DC, "d_ff": FC, "importance": "activation", "calibration_sequences": 8},
        {"steps": 0, "global_batch": 4, "micro_batch": 2, "lr": 3e-3, "warmup_steps": 1},
        eval={"batches": 4}, backend={"device": "cpu"})

    # steps 0 == hard pruning at the saved indices, bit for bit
    for how in ["activation", "magnitude"]:
        d = os.path.join(root, "s0-" + how)
        pclib.projcompd(1, job, f"run.dir={d}", f"compress.importance={how}")
        idx = kept(os.path.join(d, "importance.txt"))
        out = load_file(os.path.join(d, "final", "model.safetensors"))
        cfg = json.load(open(os.path.join(d, "final", "config.json")))
        pclib.check(cfg["hidden_size"] == DC and cfg["intermediate_size"] == FC and cfg["head_dim"] == 16
                    and not cfg["tie_word_embeddings"], f"{how}: output config has the new widths, untied")
        di = idx["d_model"]
        for name, w in out.items():
            layer = int(name.split(".")[2]) if ".layers." in name else None
            fi = idx[f"d_ff.{layer}"] if layer is not None else None
            src = sd.get(name, sd["model.embed_tokens.weight"])
            if w.ndim == 1:
                ref = src[di]
            elif "embed_tokens" in name or "lm_head" in name or any(p in name for p in ("q_proj", "k_proj", "v_proj")):
                ref = src[:, di]
            elif "o_proj" in name:
                ref = src[di, :]
            elif "gate_proj" in name or "up_proj" in name:
                ref = src[fi][:, di]
            else:  # down_proj
                ref = src[di][:, fi]
            if not np.array_equal(w, ref):
                raise SystemExit(f"FAIL: {how}: {name} differs from the base sliced at the saved indices")
        pclib.check(len(out) == 3 + 9 * L, f"{how}: steps 0 output equals hard pruning bit for bit ({len(out)} tensors)")

    d = os.path.join(root, "s0-prune")
    pclib.projcompd(1, job, f"run.dir={d}", "run.mode=prune")
    a = load_file(os.path.join(d, "final", "model.safetensors"))
    b = load_file(os.path.join(root, "s0-activation", "final", "model.safetensors"))
    pclib.check(all(np.array_equal(a[k], b[k]) for k in b), "prune steps 0 == compress steps 0")

    # the base's tokenizer files travel with the output
    tok = '{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}'
    with open(os.path.join(bdir, "tokenizer.json"), "w") as f:
        f.write(tok)
    d = os.path.join(root, "s0-tok")
    pclib.projcompd(1, job, f"run.dir={d}")
    pclib.check(open(os.path.join(d, "final", "tokenizer.json")).read() == tok, "tokenizer.json copied to the output")
    for name, text in [("chat_template.jinja", "{{ messages }}"), ("added_tokens.json", '{"<x>": 120}')]:
        with open(os.path.join(bdir, name), "w") as f:
            f.write(text)
    # output.dir given with a trailing slash, under a name with glob characters ("[ab]"),
    # beside a directory those characters would match as a pattern ("a"), which holds a
    # name like a killed save's leftover: not the save's to remove
    d, out = os.path.join(root, "s0-tok2"), os.path.join(root, "[ab]", "out-dir")
    os.makedirs(os.path.join(root, "a", "out-dir.tmp-1"))
    pclib.projcompd(1, job, f"run.dir={d}", f"output.dir={out}/")
    pclib.check(all(open(os.path.join(out, n)).read() == open(os.path.join(bdir, n)).read()
                    for n in ["chat_template.jinja", "added_tokens.json", "tokenizer.json"]),
                "chat_template.jinja and added_tokens.json copied too (into output.dir)")
    pclib.check(not os.path.exists(os.path.join(d, "final")) and
                sorted(n for n in os.listdir(os.path.dirname(out)) if n.startswith("out-dir")) == ["out-dir"] and
                os.path.isdir(os.path.join(root, "a", "out-dir.tmp-1")),
                "output.dir holds the final model, nothing is left beside it, and [ab]'s match a/ is untouched")

    # short runs: output loads in transformers and gives projcompd's validation loss
    first = {}
    for mode in ["compress", "prune"]:
        d = os.path.join(root, mode)
        pclib.projcompd(2, job, f"run.dir={d}", f"run.mode={mode}", "train.steps=8")
        ms = pclib.metrics(d)
        vals = [m["val_loss"] for m in ms if "val_loss" in m]
        first[mode] = vals[0]
        pclib.check(vals[-1] < vals[0], f"{mode}: val loss falls {vals[0]:.4f} -> {vals[-1]:.4f}")
        ref = pclib.hf_val_loss(os.path.join(d, "final"), toks[5000:], SEQ, 4 * 2)
        rel = abs(ref - vals[-1]) / ref
        pclib.check(rel < 2e-5, f"{mode}: transformers loads the fused model: val {ref:.6f} vs ours {vals[-1]:.6f}")
    d = os.path.join(root, "compress-stored")
    pclib.projcompd(2, job, f"run.dir={d}", "train.steps=8", "compress.store_grads=true")
    a = load_file(os.path.join(d, "final", "model.safetensors"))
    b = load_file(os.path.join(root, "compress", "final", "model.safetensors"))
    pclib.check(all(np.array_equal(a[k], b[k]) for k in b), "compress.store_grads: bitwise the same result")
    pclib.check(abs(first["compress"] - first["prune"]) < 1e-6,
                f"compress and prune start from the same hard-pruned loss ({first['compress']:.6f})")

    # per-layer widths
    d = os.path.join(root, "perlayer")
    pclib.projcompd(2, job, f"run.dir={d}", "train.steps=3", "compress.d_ff=[56, 72]")
    cfg = json.load(open(os.path.join(d, "final", "config.json")))
    pclib.check(cfg["intermediate_size"] == 72 and cfg.get("projcomp_intermediate_sizes") == [56, 72],
                f"per-layer: config records the widths {cfg.get('projcomp_intermediate_sizes')}")
    w = load_file(os.path.join(d, "final", "model.safetensors"))
    g0 = w["model.layers.0.mlp.gate_proj.weight"]
    pclib.check(g0.shape == (72, DC) and not g0[56:].any() and g0[:56].any()
                and not w["model.layers.0.mlp.down_proj.weight"][:, 56:].any(),
                "per-layer: layer 0 stored zero-padded from 56 to 72")
    val = [m["val_loss"] for m in pclib.metrics(d) if "val_loss" in m][-1]
    ref = pclib.hf_val_loss(os.path.join(d, "final"), toks[5000:], SEQ, 8)
    pclib.check(abs(ref - val) / ref < 2e-5, f"per-layer: transformers loads it: val {ref:.6f} vs ours {val:.6f}")
    ev = os.path.join(root, "perlayer-eval")
    pclib.projcompd(1, job, f"run.dir={ev}", "run.mode=eval", f"model.base={os.path.join(d, 'final')}")
    back = pclib.last_val_loss(ev)
    pclib.check(abs(back - val) / val < 2e-5, f"per-layer: projcompd eval reads it back ({back:.6f})")
    # ... and compress and prune take it as their base (its padded MLP matrices read at the
    # layers' widths, whole or cut into row and column blocks): kept whole, step 0 is it
    for mode in ["compress", "prune"]:
        for how in ["magnitude", "activation"]:
            again = os.path.join(root, f"perlayer-{mode}-{how}")
            pclib.projcompd(2, job, f"run.dir={again}", f"run.mode={mode}", f"model.base={os.path.join(d, 'final')}",
                            f"compress.importance={how}", f"compress.d_model={DC}", "compress.d_ff=[56, 72]",
                            "compress.split_mb=0.001")
            v0 = [m["val_loss"] for m in pclib.metrics(again) if "val_loss" in m][0]
            pclib.check(abs(v0 - back) / back < 1e-5,
                        f"per-layer as a base ({mode}, {how}): kept whole, step 0 gives its loss ({v0:.6f})")


if __name__ == "__main__":
    main()
