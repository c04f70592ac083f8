"""A hung rank does not hang the job: with run.collective_timeout 3, a pretrain job on 3
ranks whose rank 2 is stopped (SIGSTOP) mid-run ends within seconds, non-zero, with
rank 0 reporting the collective that timed out and its roll call naming rank 2, the
rank that did not answer (rank 1 answers: from the same collective, or, where the
stopped rank had done its part of rank 1's, from the next)."""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def rank_pid(rank, cfg):
    """pid of the projcompd process of `rank` running with config `cfg`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"projcompd") and cfg.encode() in cmd and \
                f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return int(pid)
    return None


def main():
    root = pclib.tmpdir("pc-watchdog-")
    mcfg, _ = pclib.tiny_pretrain_inputs(root)
    job = os.path.join(root, "job.yaml")
    run_dir = os.path.join(root, "run")
    pclib.write_yaml(job, {
        "run": {"dir": run_dir, "mode": "pretrain", "collective_timeout": 3},
        "model": {"config": mcfg},
        "data": {"train": [os.path.join(root, "train.h5")], "seq_len": 16},
        "train": {"steps": 1000000, "global_batch": 3, "micro_batch": 1},
        "checkpoint": {"every_steps": 0},
        "backend": {"device": "cpu"},
    })
    p = subprocess.Popen(["mpirun", "--oversubscribe", "-np", "3", pclib.PROJCOMPD, "--cfg", job],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=pclib.env())
    try:
        t0 = time.time()
        while not os.path.exists(os.path.join(run_dir, "metrics.jsonl")) or len(pclib.metrics(run_dir)) < 3:
            if time.time() - t0 > 60 or p.poll() is not None:
                raise SystemExit("FAIL: the job did not start training")
            time.sleep(0.2)
        pid = rank_pid(2, job)
        pclib.check(pid is not None, "found rank 2")
        os.kill(pid, signal.SIGSTOP)
        t_stop = time.time()
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise SystemExit("FAIL: the job still hangs 60 s after rank 2 stopped")
        took = time.time() - t_stop
        pclib.check(p.returncode != 0, f"the job ended with status {p.returncode} after {took:.1f} s")
        pclib.check("timed out after 3 s" in out and "rank 0" in out,
                    "rank 0 names the collective that timed out: " +
                    next((l for l in out.splitlines() if "timed out" in l), "?"))
        roll = [l for l in out.splitlines() if "roll call of collective" in l]
        pclib.check(roll and all("rank 2 (host " in l and "did not answer" in l and
                                 "rank 1 (host" not in l.split("did not answer")[0].split("roll call of")[1] for l in roll),
                    "the roll call names rank 2 alone as not answering: " +
                    (roll[0] if roll else "no roll call in the output"))
    finally:
        if p.poll() is None:
            p.kill()
        pid = rank_pid(2, job)
        if pid:
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
