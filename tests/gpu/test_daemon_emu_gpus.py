"""Which GPU each rank takes, on the emulated CUDA backend (projcompd-emu; its one device
is hidden, as CUDA hides devices, by an empty CUDA_VISIBLE_DEVICES):
- two ranks of one node that see the same one GPU both take it, and each warns that it
  is shared;
- backend.device auto with one rank that sees no GPU: every rank stops at start naming
  why (that rank would have trained on its CPU, out of step with the others' collectives:
  a hang until the watchdog);
- auto where no rank sees a GPU: all train on the CPU."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

EMU = os.path.join(pclib.BUILD, "tests", "gpu", "projcompd-emu")


def log_of(d, rank):
    with open(os.path.join(d, "logs", f"rank-{rank:05d}.log")) as f:
        return f.read()


def main():
    if not os.path.exists(EMU):
        print(f"SKIP: {EMU} not built")
        return 77
    root = pclib.tmpdir("pc-emu-gpus-")
    job = pclib.tiny_pretrain_job(root, 8, 1, {"device": "cuda", "comm": "mpi", "threads": 1})

    def launch(name, ranks, *sets):
        """ranks: per rank, its CUDA_VISIBLE_DEVICES (None: as inherited)"""
        d = os.path.join(root, name)
        args = ["mpirun", "--oversubscribe"]
        for i, vis in enumerate(ranks):
            args += [":"] if i else []
            args += ["-np", "1"] + (["env", f"CUDA_VISIBLE_DEVICES={vis}"] if vis is not None else [])
            args += [EMU, "--cfg", job, "--set", f"run.dir={d}"] + [a for s in sets for a in ("--set", s)]
        return d, subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=pclib.env(), timeout=300)

    d, p = launch("shared", [None, None])
    pclib.check(p.returncode == 0, f"two ranks on one GPU run (exit {p.returncode})" +
                ("" if p.returncode == 0 else f":\n{p.stdout[-1500:]}"))
    for rank in (0, 1):
        log = log_of(d, rank)
        pclib.check("backend cuda on GPU 0" in log and "GPU 0 (0000:00:00.0) of node" in log and
                    "is shared by 2 ranks: start one rank per GPU" in log,
                    f"rank {rank} takes GPU 0 and warns that it is shared")

    d, p = launch("one-without", [None, ""], "backend.device=auto")
    pclib.check(p.returncode != 0 and
                "rank 1: backend.device auto: this rank sees no GPU (CUDA_VISIBLE_DEVICES '') while other ranks "
                "train on theirs" in p.stdout,
                f"auto with a rank that sees no GPU stops at start (exit {p.returncode}): " +
                next((l for l in p.stdout.splitlines() if "sees no GPU" in l), p.stdout[-800:]))

    d, p = launch("none", ["", ""], "backend.device=auto")
    pclib.check(p.returncode == 0 and all("backend cpu" in log_of(d, r) for r in (0, 1)),
                f"auto where no rank sees a GPU: every rank on the CPU (exit {p.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
