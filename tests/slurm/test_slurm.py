"""slurm/projcomp.sh on a real one-node Slurm cluster started in a temporary directory
(munged, slurmctld -D, slurmd -D; stopped by pid at the end). Skips (77) when Slurm or
munge is not installed.

1. `sbatch --wait slurm/projcomp.sh job.yaml` on a tiny CPU job completes with RUN/final,
   equal bitwise to the same job run directly under mpirun.
2. A job longer than its time limit (--time=1, --signal=B:USR1@50): the warning signal
   reaches the batch shell, which forwards it; projcompd checkpoints and exits 3; the
   script requeues the job, the requeued run resumes from the checkpoint and finishes
   with final weights bitwise identical to an uninterrupted run.
With the default launcher (srun; the cluster's MpiDefault is none, so the script must
pick --mpi=pmix itself):
3. Preemption: a job in partition debug is preempted by one in partition high
   (PreemptMode=REQUEUE, GraceTime=30). Slurm's grace-time TERM reaches the srun ranks
   but not the batch shell; projcompd checkpoints and exits 3, the script finds the job
   still RUNNING and requeues it, and the requeued run resumes and finishes with the
   weights of an uninterrupted run.
4. A plain `scancel`: the ranks checkpoint and exit 3, and the job ends CANCELLED, not
   requeued; the script's last line names the RUN_DIR, and a new submission with it
   resumes from the checkpoint and finishes with the weights of an uninterrupted run.
Every wait has a hard timeout."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

SCRIPT = os.path.join(pclib.SRC, "slurm", "projcomp.sh")


def need(*progs):
    for p in progs:
        if not shutil.which(p) and not os.path.exists(os.path.join("/usr/sbin", p)):
            print(f"skip: {p} not installed")
            sys.exit(77)


def prog(p):
    return shutil.which(p) or os.path.join("/usr/sbin", p)


class Cluster:
    def __init__(self, root):
        self.root = root
        self.procs = []
        self.host = socket.gethostname()
        self.conf = os.path.join(root, "slurm.conf")
        self.env = dict(pclib.env(), SLURM_CONF=self.conf)

    def start(self):
        r = self.root
        mdir = os.path.join(r, "munge")
        os.makedirs(mdir)
        os.chmod(r, 0o711)
        os.chmod(mdir, 0o711)
        key = os.path.join(mdir, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        self.sock = os.path.join(mdir, "munge.socket")
        self.munged = subprocess.Popen(
            [prog("munged"), "--foreground", "--force", f"--socket={self.sock}", f"--key-file={key}",
             f"--pid-file={mdir}/munged.pid", f"--log-file={mdir}/munged.log", f"--seed-file={mdir}/munged.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(self.munged)
        deadline = time.time() + 20
        while not os.path.exists(self.sock) and time.time() < deadline:
            time.sleep(0.1)
        for d in ["spool", "state", "log"]:
            os.makedirs(os.path.join(r, d))
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=local
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.sock}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldPort={16817 + os.getpid() % 1000}
SlurmdPort={17818 + os.getpid() % 1000}
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmdSpoolDir={r}/spool
StateSaveLocation={r}/state
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=300
KillWait=10
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=high Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
""")
        for args in [[prog("slurmctld"), "-D", "-i", "-f", self.conf], [prog("slurmd"), "-D", "-f", self.conf]]:
            self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                               env=self.env, start_new_session=True))
        deadline = time.time() + 60
        while time.time() < deadline:
            p = self.run(["sinfo", "-h", "-o", "%T"], check=False)
            if p.returncode == 0 and p.stdout.strip() in ("idle", "idle*"):
                if p.stdout.strip() == "idle":
                    return
            time.sleep(0.5)
        raise SystemExit("FAIL: the Slurm node did not become idle:\n" + self.logs())

    def run(self, args, check=True, timeout=60):
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                           timeout=timeout, cwd=self.root)
        if check and p.returncode != 0:
            raise SystemExit(f"FAIL: {' '.join(args)} -> {p.returncode}:\n{p.stdout}")
        return p

    def logs(self):
        out = ""
        for n in ["slurmctld.log", "slurmd.log"]:
            try:
                out += f"--- {n}\n" + open(os.path.join(self.root, "log", n)).read()[-3000:]
            except OSError:
                pass
        return out

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def job_state(cl, job_id):
    p = cl.run(["scontrol", "show", "job", job_id], check=False)
    fields = dict(kv.split("=", 1) for kv in p.stdout.split() if "=" in kv)
    return fields


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")


def follow(cl, job_id, timeout, release=True):
    """The job's fields once it has ended, or (release=False) once it has left the node
    (ended or pending again), or at the timeout. With release, a requeued job held by
    Slurm (two minutes, Reason=BeginTime) is released: not within the second its last run
    ended, when slurmd revokes that run's credential (1 s resolution) and kills a
    relaunch in the same second ("Job credential revoked"), which fails the job."""
    deadline = time.time() + timeout
    state, held_since = {}, None
    while time.time() < deadline:
        state = job_state(cl, job_id)
        if state.get("JobState") in ENDED or (not release and state.get("JobState") == "PENDING"):
            break
        if state.get("JobState") == "PENDING" and state.get("Reason") == "BeginTime":
            held_since = held_since or time.time()
            if time.time() - held_since >= 3:
                cl.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)
        else:
            held_since = None
        time.sleep(1)
    return state


def wait_training(run_dir, job_id, cl, timeout=60):
    """Until the run has logged a step (its metrics) or the job has ended."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(metrics) and '"loss"' in open(metrics).read():
            return True
        if job_state(cl, job_id).get("JobState") in ENDED:
            return False
        time.sleep(0.2)
    return False


def read(path):
    return open(path).read() if os.path.exists(path) else ""


def job_output(root, run_dir, job_id):
    """What the job (named after its run directory) and its ranks printed."""
    return read(os.path.join(root, f"{os.path.basename(run_dir)}.out")) + \
        read(os.path.join(run_dir, "logs", f"projcompd-{job_id}.out"))[-3000:]


def main():
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # a meson timeout still stops the daemons
    need("slurmctld", "slurmd", "sbatch", "munged", "scontrol", "sinfo")
    root = pclib.tmpdir("pc-slurm-")
    job = pclib.tiny_stop_job(root)
    # the long job: about 50 s of steps on one rank; the warning comes 10-40 s into each
    # run (--time=1, USR1 50 s before the end, 30 s granularity), so it is stopped at
    # least once and every run makes progress
    ms, long_steps = pclib.steps_lasting(job, root, 50, 2000, 2000, 400000)
    print(f"{ms:.2f} ms per step: the long job runs {long_steps} steps")
    pclib.projcompd(1, job, f"run.dir={root}/ref-short")
    ref_short = open(os.path.join(root, "ref-short", "final", "model.safetensors"), "rb").read()

    cl = Cluster(os.path.join(root, "cluster"))
    try:
        cl.start()
        print("ok: one-node Slurm cluster is up")
        exports = f"ALL,PROJCOMPD={pclib.PROJCOMPD},LAUNCHER=mpirun"
        # 1. a short job
        run1 = os.path.join(root, "job1")
        p = cl.run(["sbatch", "--wait", "--parsable", "--ntasks=1", "--gpus-per-node=0", "--cpus-per-task=1",
                    f"--export={exports},RUN_DIR={run1}", f"--output={root}/job1.out", SCRIPT, job],
                   check=False, timeout=180)
        out1 = open(os.path.join(root, "job1.out")).read() if os.path.exists(os.path.join(root, "job1.out")) else ""
        pclib.check(p.returncode == 0, f"sbatch --wait of a short job exits 0 ({p.returncode}) {p.stdout}{out1}")
        final1 = os.path.join(run1, "final", "model.safetensors")
        pclib.check(os.path.exists(final1), "the job wrote RUN/final")
        pclib.check(open(final1, "rb").read() == ref_short, "its weights equal the same job run under mpirun")

        # 2. longer than its time limit: warned, checkpointed, requeued, resumed
        run2 = os.path.join(root, "job2")
        p = cl.run(["sbatch", "--parsable", "--ntasks=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=1",
                    "--signal=B:USR1@50", f"--export={exports},RUN_DIR={run2}", f"--output={root}/job2.out",
                    SCRIPT, job, "--set", f"train.steps={long_steps}"], timeout=60)
        job_id = p.stdout.strip().split(";")[0]
        # the uninterrupted reference runs meanwhile (oversubscribed: two cores)
        pclib.projcompd(1, job, f"run.dir={root}/ref-long", f"train.steps={long_steps}")
        state = follow(cl, job_id, 420)
        slog = open(os.path.join(run2, "logs", f"slurm-{job_id}.log")).read()
        print(slog)
        pclib.check(state.get("JobState") == "COMPLETED",
                    f"the time-limited job completed (state {state.get('JobState')}, "
                    f"restarts {state.get('Restarts')})")
        pclib.check(int(state.get("Restarts", "0")) >= 1 and "requeueing" in slog,
                    f"it was warned, checkpointed and requeued ({state.get('Restarts')} restart(s))")
        ck = os.listdir(os.path.join(run2, "checkpoints"))
        pclib.check(any(n.startswith("step-") for n in ck), f"checkpoints were written: {sorted(ck)}")
        final2 = open(os.path.join(run2, "final", "model.safetensors"), "rb").read()
        ref_long = open(os.path.join(root, "ref-long", "final", "model.safetensors"), "rb").read()
        pclib.check(final2 == ref_long, "the requeued run's final weights equal an uninterrupted run bitwise")

        # 3 and 4 with the default launcher, srun, which starts Open MPI ranks only with
        # --mpi=pmix (the cluster's MpiDefault is none): the script must choose it
        mpis = cl.run(["srun", "--mpi=list"], check=False).stdout
        if not any(l.strip() == "pmix" for l in mpis.splitlines()):
            print(f"skip 3-4: this Slurm's srun has no pmix plugin:\n{mpis}")
            return
        srun_exports = f"ALL,PROJCOMPD={pclib.PROJCOMPD}"
        srun_args = ["sbatch", "--parsable", "--ntasks=1", "--gpus-per-node=0", "--cpus-per-task=1"]
        # about 15 s of steps, one reference for both
        mid_steps = max(200, int(15e3 / ms))
        ref_mid = None

        # 3. preempted in its grace time: checkpointed, requeued by the script, resumed
        run3 = os.path.join(root, "job3")
        t0 = time.time()
        job3 = cl.run(srun_args + ["-p", "debug", f"--export={srun_exports},RUN_DIR={run3}",
                                   f"--output={root}/job3.out", SCRIPT, job, "--set", f"train.steps={mid_steps}"]
                      ).stdout.strip().split(";")[0]
        trains = wait_training(run3, job3, cl)
        pclib.check(trains, "the srun job trains" + ("" if trains else ":\n" + job_output(root, run3, job3)))
        cl.run(["sbatch", "--parsable", "-p", "high", f"--ntasks={os.cpu_count()}", "--gpus-per-node=0",
                "--output=/dev/null", "--wrap", "sleep 3"])
        pclib.projcompd(1, job, f"run.dir={root}/ref-mid", f"train.steps={mid_steps}")
        ref_mid = open(os.path.join(root, "ref-mid", "final", "model.safetensors"), "rb").read()
        state = follow(cl, job3, 300)
        slog = read(os.path.join(run3, "logs", f"slurm-{job3}.log"))
        print(slog)
        print(f"preemption case: {time.time() - t0:.0f} s")
        pclib.check("launching with srun --mpi=pmix" in slog, "MpiDefault=none: the script launched with --mpi=pmix")
        pclib.check(state.get("JobState") == "COMPLETED",
                    f"the preempted job completed (state {state.get('JobState')}, exit {state.get('ExitCode')})")
        pclib.check(int(state.get("Restarts", "0")) >= 1 and "on preemption (status 3): requeueing" in slog,
                    f"the script requeued it after its stop checkpoint ({state.get('Restarts')} restart(s))")
        rlog = read(os.path.join(run3, "logs", "rank-00000.log"))
        pclib.check("resumed after step" in rlog, "the requeued run resumed from the checkpoint")
        final3 = open(os.path.join(run3, "final", "model.safetensors"), "rb").read()
        pclib.check(final3 == ref_mid, "the preempted run's final weights equal an uninterrupted run bitwise")

        # 4. scancel: checkpointed, cancelled (not requeued); resubmitted with RUN_DIR, resumed
        run4 = os.path.join(root, "job4")
        t0 = time.time()
        submit4 = srun_args + [f"--export={srun_exports},RUN_DIR={run4}", f"--output={root}/job4.out", SCRIPT, job,
                               "--set", f"train.steps={mid_steps}"]
        job4 = cl.run(submit4).stdout.strip().split(";")[0]
        trains = wait_training(run4, job4, cl)
        pclib.check(trains, "the srun job trains" + ("" if trains else ":\n" + job_output(root, run4, job4)))
        cl.run(["scancel", job4])
        state = follow(cl, job4, 120, release=False)
        slog = read(os.path.join(run4, "logs", f"slurm-{job4}.log"))
        print(slog)
        latest = read(os.path.join(run4, "checkpoints", "latest")).strip()
        pclib.check(state.get("JobState") == "CANCELLED" and state.get("Restarts") == "0",
                    f"scancel cancels the job: not requeued (state {state.get('JobState')}, "
                    f"restarts {state.get('Restarts')})")
        pclib.check(latest != "" and "not requeued" in slog and f"RUN_DIR={run4}" in slog,
                    f"it stopped after checkpoint '{latest}' and the log names RUN_DIR={run4}")
        job4b = cl.run(submit4).stdout.strip().split(";")[0]
        state = follow(cl, job4b, 300)
        print(read(os.path.join(run4, "logs", f"slurm-{job4b}.log")))
        print(f"scancel case: {time.time() - t0:.0f} s")
        rlog = read(os.path.join(run4, "logs", "rank-00000.log"))
        pclib.check(state.get("JobState") == "COMPLETED" and "resumed after step" in rlog,
                    f"a new submission with RUN_DIR resumes and completes (state {state.get('JobState')})")
        final4 = open(os.path.join(run4, "final", "model.safetensors"), "rb").read()
        pclib.check(final4 == ref_mid, "the cancelled and resubmitted run's final weights equal an uninterrupted run")
    except BaseException:
        print(cl.logs())
        raise
    finally:
        cl.stop()


if __name__ == "__main__":
    main()
