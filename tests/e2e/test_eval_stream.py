"""eval.stream_layers: run.mode eval reading model.base one decoder layer at a time.

- The same val_loss (to the 8 decimals metrics.jsonl prints) as the whole-model eval, on
  1 and 2 ranks, with fp32 and bf16 products, for an untied GQA base, a tied base and a
  compressed output whose MLP widths differ per layer (narrower layers stored padded);
  and within 2e-5 of stock transformers' loss on the same windows; also where a rank has
  no window.
- Memory, on the guarded backend (its peak of buffers): an 8-layer base streamed holds
  less than the whole-model eval by at least 6 of its 8 layers' weights."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

SEQ, MB, BATCHES = 16, 3, 3


def eval_job(root, name, base, valid):
    job = os.path.join(root, f"{name}.yaml")
    pclib.write_yaml(job, {
        "run": {"dir": os.path.join(root, "unset"), "mode": "eval"},
        "model": {"base": base},
        "data": {"valid": [valid], "seq_len": SEQ},
        "train": {"micro_batch": MB, "global_batch": 2 * MB},
        "eval": {"batches": BATCHES},
        "backend": {"device": "cpu"},
    })
    return job


def compressed_output(root, base):
    """A compress run's fused output with per-layer MLP widths (96, 64, 80 of 128)."""
    job = pclib.compress_job(root, base, 3, SEQ, {"d_model": 48, "d_ff": [96, 64, 80], "importance": "magnitude"},
                             {"steps": 2, "global_batch": 2, "micro_batch": 2, "lr": 3e-3, "warmup_steps": 1},
                             checkpoint={"every_steps": 0}, backend={"device": "cpu"})
    d = pclib.run_job(root, job, "compress", 1)
    return os.path.join(d, "final")


def main():
    root = pclib.tmpdir("pc-evstream-")
    untied, _ = pclib.tiny_base(root, 4, 96, 64, 128, 3, name="untied")
    tied, _ = pclib.tiny_base(root, 5, 96, 64, 128, 2, tied=True, name="tied")
    _, valid, toks = pclib.markov_shards(root, 96, 5000, 2000, seed=2)
    models = {"untied": untied, "tied": tied, "per-layer d_ff": compressed_output(root, untied)}
    for name, model in models.items():
        job = eval_job(root, name.replace(" ", "-"), model, valid)
        for np_ in [1, 2]:
            for mm in ["fp32", "bf16"]:
                what = f"{name} np{np_} matmul {mm}"
                sets = [f"train.global_batch={np_ * MB}", f"backend.matmul={mm}"]
                whole = pclib.run_job(root, job, f"{name}-{np_}-{mm}-whole".replace(" ", "-"), np_, *sets)
                streamed = pclib.run_job(root, job, f"{name}-{np_}-{mm}-streamed".replace(" ", "-"), np_, *sets,
                                         "eval.stream_layers=true")
                a, b = pclib.last_val_loss(whole), pclib.last_val_loss(streamed)
                pclib.check(a == b, f"{what}: streamed val_loss {b:.8f} equals the whole model's {a:.8f}")
                log = open(os.path.join(streamed, "logs", "rank-00000.log")).read()
                pclib.check("one decoder layer at a time" in log, f"{what}: the log says it streamed")
        # data_eval_offset(w) = w * SEQ: the windows are consecutive from the shard's start
        ref = pclib.hf_val_loss(model, toks[len(toks) - 2000:], SEQ, BATCHES * MB)
        got = pclib.last_val_loss(os.path.join(root, f"{name}-1-fp32-streamed".replace(" ", "-")))
        pclib.check(abs(got - ref) / ref < 2e-5, f"{name}: streamed val_loss {got:.6f} vs transformers {ref:.6f}")

    # one window on 2 ranks: rank 1 has none, reads nothing and still joins the sums
    job = eval_job(root, "one-window", untied, valid)
    sets = ["train.global_batch=2", "train.micro_batch=1", "eval.batches=1"]
    a = pclib.last_val_loss(pclib.run_job(root, job, "one-window-whole", 2, *sets))
    d = pclib.run_job(root, job, "one-window-streamed", 2, *sets, "eval.stream_layers=true")
    b = pclib.last_val_loss(d)
    pclib.check(a == b, f"one window on 2 ranks: streamed val_loss {b:.8f} equals the whole model's {a:.8f}")
    # the ranks agree after each layer: a layer that rank 0 cannot read (a NaN in it) stops
    # rank 1 too, which has no window and reads none, at that layer, not in a wait for the
    # whole pass
    import numpy as np
    from safetensors.numpy import load_file, save_file
    bad = os.path.join(root, "bad-layer")
    os.makedirs(bad)
    for f in os.listdir(untied):
        if f != "model.safetensors":
            os.symlink(os.path.join(untied, f), os.path.join(bad, f))
    w = load_file(os.path.join(untied, "model.safetensors"))
    w["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(w, os.path.join(bad, "model.safetensors"), metadata={"format": "pt"})
    job = eval_job(root, "bad-layer", bad, valid)
    r = pclib.projcompd(2, job, f"run.dir={os.path.join(root, 'bad-layer-run')}", *sets, "eval.stream_layers=true",
                        check=False)
    logs = [open(os.path.join(root, "bad-layer-run", "logs", f"rank-{k:05d}.log")).read() for k in range(2)]
    pclib.check(r.returncode != 0 and "model.layers.1.mlp.up_proj.weight" in logs[0] and
                "layer 1 of the base: another rank failed" in logs[1],
                f"a bad layer on rank 0 stops rank 1 (no window) at that layer (exit {r.returncode})")

    # memory: one layer at a time
    big, _ = pclib.tiny_base(root, 6, 96, 256, 1024, 8, heads=4, kv=2, head_dim=64, name="big")
    job = eval_job(root, "big", big, valid)
    peak = {}
    for mode in ["false", "true"]:
        d = pclib.run_job(root, job, f"big-{mode}", 1, "train.global_batch=3", "backend.device=cpu-guarded",
                          f"eval.stream_layers={mode}")
        peak[mode] = pclib.memory_record(d)["peak_device_mib"][0]
    layer_mib = 4 * (256 * 256 * 2 + 2 * 256 * 128 + 3 * 256 * 1024 + 2 * 256) / 2**20
    pclib.check(peak["false"] - peak["true"] >= 6 * layer_mib,
                f"8 layers: streamed peak of buffers {peak['true']:.1f} MiB vs whole {peak['false']:.1f} MiB "
                f"(one layer {layer_mib:.1f} MiB)")


if __name__ == "__main__":
    main()
