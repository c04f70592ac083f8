"""bench_compress: step time of compress vs prune on the same target shape and batch,
beside the analytic bound 1 + projection_FLOPs / dense_FLOPs (ARCHITECTURE.md), for the
memory-efficient two-pass step (gradients recomputed for the update) and for
compress.store_grads (one gradient pass).

Makes a random base with transformers and random token shards, runs projcompd in
compress and in prune mode (1 rank, same global batch, same steps), and prints the
median step times, their ratio, the analytic ratio, and the overhead ratio
(measured overhead / analytic overhead). Dense FLOPs: 6 x N_compressed x tokens plus
attention (12 x layers x heads x head_dim x T per token); projection FLOPs: per matrix
2 x (materialise in the cheaper order + W P_in + P_out W + dP_out + dP_in).

  python tests/compress/bench_compress.py [--build build] [--d 512 --ff 1536 --layers 4
      --dc 256 --ffc 768 --vocab 2048 --seq 256 --batch 64 --micro 8 --steps 6 --threads 2]
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def proj_flops(d, f, L, dc, fc, V, H, KV, hd):
    def mat(dO, dI, o, i):
        pin, pout = i < dI, o < dO
        if pin and pout:
            return 2 * (min(dO * dI * i + o * dO * i, o * dO * dI + o * dI * i) + dO * dI * i + o * dO * dI
                        + o * i * dO + dI * o * i)
        if pin:
            return 2 * (2 * dO * dI * i)
        return 2 * (2 * o * dO * dI)
    per_layer = (mat(H * hd, d, H * hd, dc) + 2 * mat(KV * hd, d, KV * hd, dc) + mat(d, H * hd, dc, H * hd)
                 + 2 * mat(f, d, fc, dc) + mat(d, f, dc, fc))
    return L * per_layer + 2 * mat(V, d, V, dc)


def make_job(a):
    """A random base (transformers), token shards and a compress job for the shape in a."""
    pclib.BUILD = a.build
    pclib.PROJCOMPD = os.path.join(a.build, "daemon", "projcompd")
    root = pclib.tmpdir("pc-bench-")
    bdir, _ = pclib.tiny_base(root, 0, a.vocab, a.d, a.ff, a.layers, heads=a.heads, kv=a.kv, head_dim=a.hd,
                              scale=0, max_position_embeddings=a.seq)
    toks = pclib.markov_tokens(200000, a.vocab, seed=2)
    pclib.write_shard(os.path.join(root, "train.h5"), toks, a.vocab)
    job = os.path.join(root, "job.yaml")
    pclib.write_yaml(job, {
        "run": {"dir": root + "/x", "mode": "compress"},
        "model": {"base": bdir},
        "compress": {"d_model": a.dc, "d_ff": a.ffc, "importance": "magnitude"},
        "data": {"train": [os.path.join(root, "train.h5")], "seq_len": a.seq},
        "train": {"steps": a.steps, "global_batch": a.batch, "micro_batch": a.micro},
        "checkpoint": {"every_steps": 0},
        "backend": {"device": "cpu", "threads": a.threads},
    })
    return root, job


def parse(extra=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("PC_BUILD", "build"))
    for k, v in dict(d=512, ff=1536, layers=4, dc=256, ffc=768, vocab=2048, heads=8, kv=4, hd=64, seq=256,
                     batch=64, micro=8, steps=6, threads=2).items():
        ap.add_argument("--" + k, type=int, default=v)
    for k, v in (extra or {}).items():
        ap.add_argument("--" + k, default=v)
    return ap.parse_args()


def main():
    a = parse()
    root, job = make_job(a)
    times = {}
    for mode, extra in [("prune", []), ("compress", ["compress.store_grads=false"]),
                        ("compress-stored", ["compress.store_grads=true"])]:
        d = os.path.join(root, mode)
        pclib.projcompd(1, job, f"run.dir={d}", f"run.mode={mode.split('-')[0]}", *extra)
        st = [m["step_time"] for m in pclib.metrics(d) if "step_time" in m][1:]
        times[mode] = statistics.median(st)
    tokens = a.batch * a.seq
    n_c = (a.layers * (a.dc * a.heads * a.hd * 2 + 2 * a.dc * a.kv * a.hd + 3 * a.dc * a.ffc) + a.vocab * a.dc)
    dense = 6 * n_c * tokens + 12 * a.layers * a.heads * a.hd * a.seq * tokens
    proj = proj_flops(a.d, a.ff, a.layers, a.dc, a.ffc, a.vocab, a.heads, a.kv, a.hd)
    bound = 1 + proj / dense
    print(f"shape: base d {a.d} ff {a.ff} x{a.layers} -> d' {a.dc} ff' {a.ffc}; batch {a.batch} x {a.seq} tokens; "
          f"{a.threads} thread(s)")
    print(f"analytic bound 1 + proj/dense = 1 + {proj:.3g}/{dense:.3g} = {bound:.3f}")
    print(f"prune                          step {times['prune']:.3f} s")
    for mode, what in [("compress", "two passes, memory-efficient"), ("compress-stored", "store_grads")]:
        ratio = times[mode] / times["prune"]
        print(f"compress ({what:<28}) step {times[mode]:.3f} s  ratio {ratio:.3f}  "
              f"overhead / analytic overhead {(ratio - 1) / (bound - 1):.2f}")


if __name__ == "__main__":
    main()
