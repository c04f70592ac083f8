"""The GPU kit's own check (tests/gpu/kit.sh run): before any GPU work, the kit's
programs and libraries run on this machine. A tiny base made by transformers, HDF5
shards written by h5py, and a compress job on 2 CPU ranks under the kit's mpirun (Open
MPI, HDF5, libyaml and OpenBLAS all from the kit): it finishes, its loss falls, and its
fused model loads in transformers with the daemon's validation loss (2e-5 relative)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def main():
    root = pclib.tmpdir("pc-kit-")
    base, _ = pclib.tiny_base(root, 4, 64, 64, 128, 2, heads=4, kv=2, head_dim=16)
    _, _, toks = pclib.markov_shards(root, 64, 8000, 2000, seed=5)
    job = pclib.compress_job(root, base, 11, 32, {"d_model": 48, "d_ff": 96},
                             {"steps": 6, "global_batch": 4, "micro_batch": 2, "lr": 3e-3, "warmup_steps": 0},
                             backend={"device": "cpu"}, eval={"every_steps": 6, "batches": 4})
    d = pclib.run_job(root, job, "run", 2)
    losses = [m["loss"] for m in pclib.metrics(d) if "loss" in m]
    pclib.check(len(losses) == 6 and losses[-1] < losses[0], f"kit: 2-rank CPU compress ran, loss {losses[0]:.4f} -> "
                f"{losses[-1]:.4f}")
    val = [m["val_loss"] for m in pclib.metrics(d) if "val_loss" in m][-1]
    hf = pclib.hf_val_loss(os.path.join(d, "final"), toks[8000:], 32, 4 * 2)
    pclib.check(abs(hf - val) <= 2e-5 * abs(val), f"kit: the fused model in transformers: val loss {hf:.6f} vs the "
                f"daemon's {val:.6f}")


if __name__ == "__main__":
    main()
