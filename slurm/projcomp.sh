#!/bin/bash
# projcomp.sh: run projcompd on a Slurm allocation, one rank per GPU (or per task on a
# CPU-only cluster with backend.device: cpu), resuming and requeueing across time limits
# and preemption.
#
#   sbatch slurm/projcomp.sh job.yaml [--set key.sub=value]...
#   sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 --time=24:00:00 slurm/projcomp.sh job.yaml
#   sbatch --gpus-per-node=0 --ntasks-per-node=4 slurm/projcomp.sh job.yaml --set backend.device=cpu
#
# With GPUs the script starts one rank per GPU, so --ntasks-per-node must be at least the
# GPUs per node (it exits 2 saying so otherwise). CPU-only clusters need --gpus-per-node=0
# (the default below asks for a GPU, which a cluster without GPUs rejects) and run one
# rank per task.
#
# Knobs: the #SBATCH lines below (override any of them on the sbatch command line) and
# these environment variables (pass with sbatch --export=ALL,NAME=value):
#   PROJCOMPD    the projcompd binary (default: projcompd next to this script's
#                checkout in build/daemon/, else on PATH)
#   RUN_DIR      the run directory (default: runs/<job name>-<job id>, kept the same
#                across requeues of one job since the job id does not change; a new
#                submission resumes a run only with RUN_DIR set to it, which the stop
#                message names); the job YAML's run.dir is overridden with it
#   LAUNCHER     srun | mpirun (default: srun inside a Slurm job, else mpirun; outside
#                Slurm the script starts SLURM_NTASKS ranks, 1 when it is unset)
#   LAUNCH_ARGS  extra arguments for the launcher. srun gets --mpi=pmix where Slurm's
#                MpiDefault is none (Open MPI cannot start under it), srun offers pmix
#                and neither LAUNCH_ARGS nor SLURM_MPI_TYPE names a plugin
#
# Signals: projcompd stops at the next step boundary after SIGUSR1, SIGTERM or SIGINT, writes a
# checkpoint and exits 3. Slurm sends USR1 to this batch shell 120 s before the time
# limit (--signal=B:USR1@120), which forwards it to the ranks; preemption (in its grace
# time) and `scancel --signal` reach the ranks directly; a plain scancel or
# `scontrol requeue` sends TERM to the ranks and this shell. After a stop the script asks
# Slurm (scontrol show job) what is happening to the job: still RUNNING (time-limit
# warning, preemption) -> it requeues the job (scontrol requeue) and the requeued job
# resumes from the newest checkpoint in RUN_DIR/checkpoints that verifies; already requeued by Slurm (scontrol requeue,
# preemption past its grace time) -> nothing to do; ending (scancel, the time limit
# itself) -> not requeued, the log names the command that continues the run. Where TERM
# reaches mpirun too, it kills the ranks and exits 1: a checkpoint published since the
# start still counts as the stop (status 3).
# Exit status: 0 finished (RUN_DIR/final written); 2 bad usage, allocation or config,
# nothing started; 3 stopped after writing a checkpoint, which resumes the run (the last
# log line says whether the job was requeued or how to continue it); other: failure.
#SBATCH --job-name=projcomp
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=projcomp-%j.out

set -u

if [ $# -lt 1 ]; then
    echo "usage: sbatch slurm/projcomp.sh JOB.yaml [--set key.sub=value]..." >&2
    exit 2
fi
JOB_YAML=$1
shift

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# sbatch copies the script to a spool directory: use the submit directory's checkout then
if [ ! -x "$SCRIPT_DIR/../build/daemon/projcompd" ] && [ -n "${SLURM_SUBMIT_DIR:-}" ]; then
    SCRIPT_DIR="$SLURM_SUBMIT_DIR/slurm"
fi
if [ -z "${PROJCOMPD:-}" ]; then
    if [ -x "$SCRIPT_DIR/../build/daemon/projcompd" ]; then
        PROJCOMPD="$SCRIPT_DIR/../build/daemon/projcompd"
    else
        PROJCOMPD=$(command -v projcompd || true)
    fi
fi
if [ -z "$PROJCOMPD" ] || [ ! -x "$PROJCOMPD" ]; then
    echo "projcomp.sh: projcompd not found: set PROJCOMPD=/path/to/projcompd" >&2
    exit 2
fi

# ranks: one per GPU of the allocation (nodes x GPUs per node) when it has GPUs, else
# the allocation's tasks (CPU-only clusters)
NTASKS=${SLURM_NTASKS:-${SLURM_NPROCS:-1}}
PER_NODE=""
GPN=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}}
GPN=${GPN##*:} # "h100:8" -> 8
if [[ "$GPN" =~ ^[0-9]+$ ]] && [ "$GPN" -gt 0 ]; then
    PER_NODE=$GPN
    NTASKS=$((${SLURM_JOB_NUM_NODES:-1} * GPN))
fi
# one rank per GPU needs a task slot per GPU on every node (srun refuses more tasks than
# the allocation has: "More processors requested than permitted"); SLURM_TASKS_PER_NODE
# reads e.g. "8(x3),4"
if [ -n "$PER_NODE" ] && [ -n "${SLURM_TASKS_PER_NODE:-}" ]; then
    MIN_TPN=""
    IFS=, read -r -a TPN_LIST <<< "$SLURM_TASKS_PER_NODE"
    for TPN in "${TPN_LIST[@]}"; do
        TPN=${TPN%%(*}
        [[ "$TPN" =~ ^[0-9]+$ ]] || continue
        if [ -z "$MIN_TPN" ] || [ "$TPN" -lt "$MIN_TPN" ]; then MIN_TPN=$TPN; fi
    done
    if [ -n "$MIN_TPN" ] && [ "$MIN_TPN" -lt "$PER_NODE" ]; then
        echo "projcomp.sh: the allocation has $MIN_TPN task(s) on a node with $PER_NODE GPU(s), and the script starts one rank per GPU: submit with --ntasks-per-node=$PER_NODE --gpus-per-node=$PER_NODE (nothing was started)" >&2
        exit 2
    fi
fi
LAUNCHER=${LAUNCHER:-}
if [ -z "$LAUNCHER" ]; then
    if command -v srun > /dev/null 2>&1 && [ -n "${SLURM_JOB_ID:-}" ]; then LAUNCHER=srun; else LAUNCHER=mpirun; fi
fi
if [ "$LAUNCHER" != srun ] && [ "$LAUNCHER" != mpirun ]; then
    echo "projcomp.sh: LAUNCHER must be srun or mpirun, not '$LAUNCHER'" >&2
    exit 2
fi

JOB_ID=${SLURM_JOB_ID:-local$$}
PINNED=${RUN_DIR:+1} # a RUN_DIR given: the same command finds it again (the default has the job id)
RUN_DIR=${RUN_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/runs/${SLURM_JOB_NAME:-projcomp}-$JOB_ID}
mkdir -p "$RUN_DIR/logs" || { echo "projcomp.sh: cannot create $RUN_DIR" >&2; exit 1; }
LOG="$RUN_DIR/logs/slurm-$JOB_ID.log"
RESTARTS=${SLURM_RESTART_COUNT:-0}

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) projcomp.sh job $JOB_ID (restart $RESTARTS): $*" | tee -a "$LOG" >&2; }

export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

# srun's MPI plugin: Slurm's default MpiDefault=none gives Open MPI no way to wire up its
# ranks (they die in MPI_Init), so where neither LAUNCH_ARGS nor SLURM_MPI_TYPE chooses
# one, take pmix when this Slurm has it ("pmix" on a line of its own in srun --mpi=list)
MPI_ARG=""
if [ "$LAUNCHER" = srun ] && ! [[ " ${LAUNCH_ARGS:-} " =~ [[:space:]]--mpi[=[:space:]] ]] && [ -z "${SLURM_MPI_TYPE:-}" ]; then
    MPI_DEFAULT=$(scontrol show config 2> /dev/null | sed -n 's/^MpiDefault *= *//p')
    if [ "$MPI_DEFAULT" = none ] && srun --mpi=list 2>&1 | grep -Eq '(^|[[:space:]/])pmix[[:space:]]*$'; then
        MPI_ARG=--mpi=pmix
        log "Slurm's MpiDefault is none, under which Open MPI cannot start: launching with srun --mpi=pmix (LAUNCH_ARGS=--mpi=<plugin> chooses another)"
    fi
fi

CMD=("$PROJCOMPD" --cfg "$JOB_YAML" "$@" --set "run.dir=$RUN_DIR")
case "$LAUNCHER" in
    srun) LAUNCH=(srun --ntasks="$NTASKS" ${PER_NODE:+--ntasks-per-node="$PER_NODE"} --kill-on-bad-exit=1
                  $MPI_ARG ${LAUNCH_ARGS:-}) ;;
    mpirun) LAUNCH=(mpirun -np "$NTASKS" ${LAUNCH_ARGS:-}) ;;
esac

SIGNALLED=""
CHILD=""
forward() { # $1: the signal this shell received
    SIGNALLED=$1
    log "received SIG$1: asking the ranks to checkpoint and stop"
    if [ -n "$CHILD" ]; then
        if [ "$LAUNCHER" = srun ] && [ -n "${SLURM_JOB_ID:-}" ]; then
            # in the background, bounded: on a job being requeued scancel retries for
            # minutes ("Job can not be altered now"), which would hold this shell
            { timeout 10 scancel --signal=USR1 "$SLURM_JOB_ID" 2> /dev/null || kill -USR1 "$CHILD" 2> /dev/null; } &
        else
            kill -USR1 "$CHILD" 2> /dev/null # mpirun forwards USR1 to its ranks
        fi
    fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

latest_now() { cat "$RUN_DIR/checkpoints/latest" 2> /dev/null; }
LATEST_AT_START=$(latest_now)
log "starting $NTASKS rank(s) with $LAUNCHER: ${CMD[*]}"
"${LAUNCH[@]}" "${CMD[@]}" >> "$RUN_DIR/logs/projcompd-$JOB_ID.out" 2>&1 &
CHILD=$!

# `wait` returns early (status > 128) when a trapped signal arrives: wait again until
# the launcher itself has exited. Slurm's own time limit bounds the whole job.
while :; do
    wait "$CHILD"
    STATUS=$?
    kill -0 "$CHILD" 2> /dev/null || break
done
if [ "$STATUS" -gt 128 ]; then # interrupted just as it exited: collect its own status
    wait "$CHILD" 2> /dev/null
    S2=$?
    [ "$S2" != 127 ] && STATUS=$S2
fi

log "projcompd exited with status $STATUS"
# a TERM that reached mpirun too (preemption, scancel: Slurm signals every process of the
# job) makes it kill the ranks and exit 1 even where they wrote their stop checkpoint
# first: a checkpoint published since the start is a stop to resume from all the same
if [ -n "$SIGNALLED" ] && [ "$STATUS" != 0 ] && [ "$STATUS" != 3 ] && [ "$(latest_now)" != "$LATEST_AT_START" ]; then
    log "the launcher ended with status $STATUS after SIG$SIGNALLED, but checkpoint $(latest_now) was written: stopped"
    STATUS=3
fi
case "$STATUS" in
    0) log "finished (status 0): the final weights are in $RUN_DIR/final"; exit 0 ;;
    2) log "projcompd refused the command line or the job file (status 2): see $RUN_DIR/logs/projcompd-$JOB_ID.out"; exit 2 ;;
esac

# Stopped after a checkpoint (3) or failed. What comes next depends on Slurm's view of
# the job, not on the signal this shell saw: preemption's grace-time TERM reaches the srun
# ranks but not this shell, scancel's and scontrol requeue's TERM reach both. Still
# RUNNING (the time-limit warning, preemption in its grace time, a signal sent to the
# steps): a stop is requeued here. Its restart count past this run's (scontrol requeue,
# preemption past its grace time): Slurm has requeued it. Anything else (COMPLETING:
# scancel, the time limit itself): the job is ending and stays ended.
if [ -n "${SLURM_JOB_ID:-}" ]; then
    CONTINUE="submit it again with RUN_DIR=$RUN_DIR (sbatch --export=ALL,RUN_DIR=$RUN_DIR ... slurm/projcomp.sh ...)"
    job_field() { scontrol show job "$SLURM_JOB_ID" 2> /dev/null | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }
    JOB_STATE=$(job_field JobState)
    JOB_RESTARTS=$(job_field Restarts)
    JOB_REASON=$(job_field Reason)
    PREEMPTED_AT=$(job_field PreemptTime)
else
    if [ "$PINNED" ]; then CONTINUE="rerun the same command"; else CONTINUE="rerun the same command with RUN_DIR=$RUN_DIR"; fi
    JOB_STATE="" JOB_RESTARTS="" JOB_REASON="" PREEMPTED_AT=""
fi
REQUEUED_BY_SLURM=""
if [[ "$JOB_RESTARTS" =~ ^[0-9]+$ ]] && [ "$JOB_RESTARTS" -gt "$RESTARTS" ]; then REQUEUED_BY_SLURM=1; fi

if [ "$STATUS" != 3 ]; then
    if [ -n "$SIGNALLED" ]; then
        WHAT="stopped by SIG$SIGNALLED before a checkpoint was written (status $STATUS)"
    else
        WHAT="failed (status $STATUS): see $RUN_DIR/logs/projcompd-$JOB_ID.out and the rank logs beside it"
    fi
    if [ "$REQUEUED_BY_SLURM" ]; then
        log "$WHAT; Slurm has requeued job $SLURM_JOB_ID already: it starts again from the last checkpoint, if any"
    else
        log "$WHAT; not requeued: to continue from the last checkpoint, if any, $CONTINUE"
    fi
    exit "$STATUS"
fi

if [ "$SIGNALLED" = USR1 ]; then
    WHY="SIGUSR1, the time-limit warning"
elif [ "$PREEMPTED_AT" != "" ] && [ "$PREEMPTED_AT" != None ]; then
    WHY="preemption"
elif [ -n "$SIGNALLED" ]; then
    WHY="SIG$SIGNALLED"
else
    WHY="a signal to the ranks"
fi
STOPPED="stopped after checkpoint $(latest_now) on $WHY (status 3)"
if [ -z "${SLURM_JOB_ID:-}" ]; then
    log "$STOPPED: $CONTINUE to resume from $RUN_DIR"
elif [ "$REQUEUED_BY_SLURM" ]; then
    log "$STOPPED; Slurm has requeued job $SLURM_JOB_ID already: it resumes from $RUN_DIR when it runs again"
elif [ "$JOB_STATE" = RUNNING ]; then
    log "$STOPPED: requeueing job $SLURM_JOB_ID, which resumes from $RUN_DIR when it runs again"
    scontrol requeue "$SLURM_JOB_ID" || log "scontrol requeue failed, so the job ends: to continue, $CONTINUE"
else
    log "$STOPPED while Slurm ends the job (JobState=${JOB_STATE:-unknown} Reason=${JOB_REASON:-unknown}: scancel, the time limit): not requeued; to continue, $CONTINUE"
fi
exit 3
