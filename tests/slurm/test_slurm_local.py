"""slurm/projcomp.sh outside an allocation (LAUNCHER=mpirun, no Slurm), as on a machine
without Slurm or for trying a job before submitting it:

- RUN_DIR not given: the run directory is runs/projcomp-local<pid> under the working
  directory, a new one each time; a stop says which RUN_DIR resumes it.
- TERM to the script and to mpirun at once, as Slurm's preemption and scancel signal
  every process of a job: mpirun kills the ranks and exits 1, but the ranks wrote their
  stop checkpoint first, so the script reports the stop (status 3).
- The named command (RUN_DIR set) resumes from that checkpoint and ends with final weights
  bitwise identical to an uninterrupted run."""
import glob
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

SCRIPT = os.path.join(pclib.SRC, "slurm", "projcomp.sh")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def main():
    root = pclib.tmpdir("pc-slurm-local-")
    job = pclib.tiny_stop_job(root)
    # a job of about 10 s on one rank, stopped about a second in
    ms, steps = pclib.steps_lasting(job, root, 10, 500, 1000, 200000)
    print(f"{ms:.2f} ms per step: the job runs {steps} steps")
    pclib.projcompd(1, job, f"run.dir={root}/ref", f"train.steps={steps}")

    env = dict(pclib.env(), LAUNCHER="mpirun", PROJCOMPD=pclib.PROJCOMPD)
    env.pop("RUN_DIR", None)
    env.pop("SLURM_JOB_ID", None)
    cmd = ["bash", SCRIPT, job, "--set", f"train.steps={steps}"]
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    run_dir = os.path.join(root, "runs", f"projcomp-local{p.pid}")
    log, metrics = os.path.join(run_dir, "logs", "rank-00000.log"), os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + 60  # until step 2 is in the metrics (flushed each step)
    while time.time() < deadline and not (os.path.exists(metrics) and open(metrics).read().count('"loss"') >= 2):
        time.sleep(0.02)
    print(f"{time.time() - t0:.2f} s after the launch: step 2 done" if time.time() < deadline else "no step 2 in 60 s")
    pclib.check(os.path.exists(log), f"the default run directory is {run_dir}")
    launcher = [c for c in children(p.pid) if "mpirun" in open(f"/proc/{c}/cmdline").read()]
    pclib.check(len(launcher) == 1, f"the script's mpirun found ({launcher})")
    os.kill(p.pid, signal.SIGTERM)
    os.kill(launcher[0], signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    print(err)
    latest = open(os.path.join(run_dir, "checkpoints", "latest")).read().strip()
    step = int(re.search(r"step-0*(\d+)", latest).group(1))
    pclib.check(p.returncode == 3 and step < steps, f"TERM to the script and mpirun: exit 3 after checkpoint "
                                                    f"{latest}, before the last step {steps} (got {p.returncode})")
    pclib.check(f"rerun the same command with RUN_DIR={run_dir} to resume from {run_dir}" in err,
                "the stop names the RUN_DIR that resumes it")

    again = subprocess.run(cmd, cwd=root, env=dict(env, RUN_DIR=run_dir), capture_output=True, text=True,
                           timeout=300)
    pclib.check(again.returncode == 0 and f"resumed after step {step}" in open(log).read(),
                f"RUN_DIR={run_dir} resumes after step {step} and finishes ({again.returncode}): "
                f"{again.stderr[-2000:] if again.returncode else ''}")
    got = open(os.path.join(run_dir, "final", "model.safetensors"), "rb").read()
    want = open(os.path.join(root, "ref", "final", "model.safetensors"), "rb").read()
    pclib.check(got == want, "the resumed run's final weights equal an uninterrupted run bitwise")
    pclib.check(len(glob.glob(os.path.join(root, "runs", "*"))) == 1, "the rerun made no new run directory")


if __name__ == "__main__":
    main()
