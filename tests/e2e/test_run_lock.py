"""One job a run directory: while a job runs, a second one given the same run.dir is
refused at once (naming the first's pid and host) and the first goes on untouched; the
lock dies with its holder, so after the first is killed (SIGKILL, no clean exit) the
same run directory takes a new job."""
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def main():
    root = pclib.tmpdir("pc-run-lock-")
    mcfg, shard = pclib.tiny_pretrain_inputs(root)
    job = os.path.join(root, "job.yaml")
    run_dir = os.path.join(root, "run")
    pclib.write_yaml(job, {
        "run": {"dir": run_dir, "mode": "pretrain"},
        "model": {"config": mcfg},
        "data": {"train": [shard], "seq_len": 16},
        "train": {"steps": 1000000, "global_batch": 2, "micro_batch": 1, "warmup_steps": 0},
        "checkpoint": {"every_steps": 0},
        "backend": {"device": "cpu"},
    })
    first = subprocess.Popen(["mpirun", "--oversubscribe", "-np", "2", pclib.PROJCOMPD, "--cfg", job],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=pclib.env())
    try:
        t0 = time.time()
        while not os.path.exists(os.path.join(run_dir, "metrics.jsonl")) or len(pclib.metrics(run_dir)) < 2:
            if time.time() - t0 > 60 or first.poll() is not None:
                raise SystemExit("FAIL: the first job did not start training")
            time.sleep(0.2)
        holder = open(os.path.join(run_dir, ".lock")).read()
        pclib.check(f"on host {socket.gethostname()}" in holder and "pid " in holder,
                    f"RUN/.lock names its holder: {holder.strip()}")
        rows = len(pclib.metrics(run_dir))
        second = pclib.projcompd(1, job, "train.steps=3", check=False)
        out = second.stdout + second.stderr
        pclib.check(second.returncode != 0 and f"run.dir: {run_dir} is in use by another projcompd job (pid " in out
                    and f"host {socket.gethostname()}" in out,
                    f"a second job on the same run.dir is refused (exit {second.returncode}): " +
                    next((l for l in out.splitlines() if "in use" in l), out[-300:]))
        time.sleep(1.0)
        pclib.check(first.poll() is None and len(pclib.metrics(run_dir)) > rows,
                    "the first job goes on training")
    finally:
        if first.poll() is None:
            for pid in os.listdir("/proc"):  # the ranks themselves: no clean exit, no unlock
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                except OSError:
                    continue
                if cmd and cmd[0].endswith(b"projcompd") and job.encode() in cmd:
                    os.kill(int(pid), signal.SIGKILL)
            first.wait(timeout=60)
    third = pclib.projcompd(1, job, "train.steps=2", check=False)
    pclib.check(third.returncode == 0, f"after the first job is killed the run directory takes a new one "
                                       f"(exit {third.returncode})")


if __name__ == "__main__":
    main()
