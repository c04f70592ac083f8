"""The daemon on the CUDA backend's own sources, run on the host by the SIMT emulator
(projcompd-emu: backend_cuda.cu and attention_tc.cu compiled against tests/gpu/simt_emu.h),
against projcompd on the CPU backend. On 2 ranks the device collectives go over the NCCL
comm (cuda/comm_nccl.c) on NCCL's API emulated with MPI (nccl_emu.c).

- compress with activation importance and prune, 1 rank, backend.device cuda in fp32
  (backend.matmul fp32): every step's loss within 1e-4 relative, grad norms within 1e-3,
  the fused weights within 1e-4 of their max, the same kept indices;
- compress on 2 ranks with split blocks (shared factors, the W_C broadcasts and G reduces
  on device buffers, over NCCL): the same against the CPU backend's 2-rank run; both
  compress runs keep the gradients of every block with projections (compress.store_grads
  auto on a device of known size), where the CPU runs recompute them;
- attention on bf16 tensor cores (backend.attention bf16): first loss within 1e-2 of the
  CPU's, last within 2e-2, and not equal to the fp32 run; its bf16 copy of dO as large as
  the plan counts it (the model keeps q, k, v in bf16 itself);
- backend.matmul bf16 on 2 ranks with split blocks (W_C rounded on the device and sent in
  bf16, the products reading the bf16 weight copy): losses within 1e-3 of the CPU's bf16
  run (rounding flips feed back, tests/compress/test_bf16_weights.py); the same with
  compress.shard_grads (bf16 W_C staged in the owned sums, G through the model's stage
  windows and per-stage reduces over the NCCL comm; the update recomputing the gradients,
  store_grads false) against the CPU's sharded run;
- backend.matmul bf16 with bf16 attention (each layer's q, k, v and attention output kept
  in bf16 only; the log says so): first loss within 1e-2 of the CPU's bf16 products with
  fp32 attention, last within 2e-2; attention's dO copy as large as the plan counts it;
- the bf16 products and attention run again with every kernel's blocks shuffled
  (PC_EMU_BLOCK_ORDER): losses, grad norms, validation losses and fused tensors bit for
  bit the same (the embedding and RMSNorm weight gradients are summed in a fixed order);
- on a device with too little shared memory a block for the tensor-core kernels
  (PC_EMU_SMEM_OPTIN), bf16 attention falls back to fp32 and the plan counts no bf16
  copies for it;
- backend.attention cudnn in a build without cuDNN: the rank stops before training with
  the key and the reason, and no model is written; with the emulator's stand-in for
  cuDNN (PC_EMU_CUDNN=1, tests/gpu/cudnn_emu.cpp) the job runs the backend's cuDNN route,
  its losses as the bf16 attention run's are against the CPU;
- backend.attention auto with bf16 products (daemon/attn_auto.c): without cuDNN, with a
  stand-in whose calls all fail (PC_EMU_CUDNN=refuse) and with one whose results are off
  (PC_EMU_CUDNN=wrong), the log says why and the job runs the kernels, bit for bit the
  bf16 attention run; with the stand-in on 2 ranks both log the same times and choice,
  the choice follows the rule (cuDNN under 0.95 of the kernels' mean time) and the
  backend runs it, the losses within 1e-2 / 2e-2 of the 1-rank bf16 attention run;
- distillation from a bf16 teacher (model.dtype bf16): losses within 1e-3 of the CPU's,
  with an fp32 student and with bf16 products (the student's dlogits written in bf16 by
  distill_16);
- the CUDA backend's bf16 operand copies at the end of each bf16 run, on every rank:
  used (non-zero) and within what the plan counts for them;
- the log names the emulated device;
- on a device other processes hold half of (PC_EMU_DEVICE_OTHERS_MIB) the plan is checked
  against the free half; on one they hold all of, a compress job stops before any weight
  is read, naming the device's free memory and its size; with backend.memory_gib set it
  goes by that instead;
- PC_CUDA_PROFILE=1: the prune run again prints the op profile on stderr at exit (the
  products, the optimizer, the loss), with the unprofiled run's losses and grad norms,
  bit for bit."""
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

V, D, F, L, DC, FC, SEQ = 96, 64, 128, 2, 48, 80, 16
EMU = os.path.join(pclib.BUILD, "tests", "gpu", "projcompd-emu")


def main():
    if not os.path.exists(EMU):
        print(f"SKIP: {EMU} not built")
        return 77
    root = pclib.tmpdir("pc-daemon-emu-")
    bdir, _ = pclib.tiny_base(root, 4, V, D, F, L)
    pclib.markov_shards(root, V, 5000, 1000, seed=2)
    job = pclib.compress_job(
        root, bdir, 3, SEQ,
        {"d_model": DC, "d_ff": FC, "importance": "activation", "calibration_sequences": 8},
        {"steps": 4, "global_batch": 4, "micro_batch": 2, "lr": 3e-3, "warmup_steps": 1},
        eval={"batches": 2}, checkpoint={"every_steps": 0}, backend={"threads": 1})

    def launch(name, np_, emu, *sets, check=True):
        d = os.path.join(root, name)
        args = ["mpirun", "--oversubscribe", "-np", str(np_), EMU if emu else pclib.PROJCOMPD, "--cfg", job,
                "--set", f"run.dir={d}"]
        dev = ["backend.device=cuda", "backend.comm=mpi", "backend.matmul=fp32"] if emu else ["backend.device=cpu"]
        for s in dev + list(sets):
            args += ["--set", s]
        return d, pclib.run(args, check=check)

    def run(name, np_, emu, *sets, out=None):
        d, p = launch(name, np_, emu, *sets)
        if out is not None:
            out.append(p.stderr)
        return d

    nccl = "backend.comm=nccl"

    def logged_vs_plan(d, np_, what="bf16 operand copies", exact=False):
        """what's bytes at the end of the run on each rank: used, and within (exact: equal
        to) what the plan counts for them"""
        for rank in range(np_):
            log = open(os.path.join(d, "logs", f"rank-{rank:05d}.log")).read()
            m = re.search(what + r": (\d+) bytes here \(plan: (\d+)\)", log)
            used, plan = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
            pclib.check(m is not None and 0 < used and (used == plan if exact else used <= plan),
                        f"{os.path.basename(d)} rank {rank}: {m.group(0) if m else what + ' not logged'} "
                        f"(used, {'as planned' if exact else 'within the plan'})")

    for mode, np_, sets in [("compress", 1, []), ("prune", 1, ["run.mode=prune"]),
                            ("compress-split", 2, ["compress.split_mb=0.01"])]:
        cpu, emu = run(f"{mode}-cpu", np_, False, *sets), run(f"{mode}-emu", np_, True, *sets, nccl)
        log = open(os.path.join(emu, "logs", "rank-00000.log")).read()
        pclib.check("backend cuda on GPU 0 (SIMT emulator)" in log, f"{mode}: ran on the emulated CUDA backend")
        if np_ > 1:
            pclib.check("device collectives over nccl" in log, f"{mode}: device collectives over the NCCL comm")
        if mode != "prune":  # store_grads auto on a device of known size: nothing recomputed
            m = re.search(r"gradients of (\d+) of \d+ blocks kept here .*recomputes the rest \((\S+) FLOPs", log)
            pclib.check(m is not None and m.group(1) != "0" and float(m.group(2)) == 0,
                        f"{mode}: store_grads auto keeps the gradients of every block with projections on the device "
                        f"({m.group(0) if m else 'not logged'})")
        pclib.same_importance(emu, cpu, f"{mode} emulated CUDA vs CPU")
        pclib.close_runs(pclib.run_arrays(emu), pclib.run_arrays(cpu), 1e-4, 1e-4,
                         f"{mode} np{np_}: emulated CUDA vs CPU")
        if mode == "compress":
            ref, fp32 = pclib.run_arrays(cpu), pclib.run_arrays(emu)
            att = pclib.run_arrays(run("compress-emu-attn-bf16", 1, True, "backend.attention=bf16"))
            r0, r1 = abs(att[0][0] - ref[0][0]) / ref[0][0], abs(att[0][-1] - ref[0][-1]) / ref[0][-1]
            pclib.check(r0 < 1e-2 and r1 < 2e-2 and not np.array_equal(att[0], fp32[0]),
                        f"bf16 tensor-core attention vs CPU fp32: first loss rel {r0:.2e}, last {r1:.2e}")
            logged_vs_plan(os.path.join(root, "compress-emu-attn-bf16"), 1, "attention bf16 copies", exact=True)
    # the op profiler through the environment: a table on stderr, the run unchanged
    err = []
    os.environ["PC_CUDA_PROFILE"] = "1"
    prof = pclib.run_arrays(run("prune-emu-profiled", 1, True, "run.mode=prune", out=err))
    del os.environ["PC_CUDA_PROFILE"]
    plain = pclib.run_arrays(os.path.join(root, "prune-emu"))
    pclib.check(all(w in err[0] for w in ["region (device time)", "gemm fp32", "adamw", "xent_fwd", "all regions"]),
                "PC_CUDA_PROFILE=1: the rank prints its op profile at exit:\n" + err[0][-1500:])
    pclib.check(np.array_equal(prof[0], plain[0]) and np.array_equal(prof[1], plain[1]),
                "PC_CUDA_PROFILE=1: the same losses and grad norms as unprofiled, bit for bit")
    # a device that other processes hold half of: the plan is checked against what is free;
    # all of it: refused before any weight is read, unless backend.memory_gib says otherwise
    os.environ["PC_EMU_DEVICE_OTHERS_MIB"] = str(40 * 1024)
    d = run("compress-emu-half-device", 1, True, "compress.importance=magnitude")
    m = re.search(r"the plan needs [0-9.]+ of the ([0-9.]+) GiB this rank may use",
                  open(os.path.join(d, "logs", "rank-00000.log")).read())
    pclib.check(m is not None and 39.9 < float(m.group(1)) <= 40.0,
                f"80 GiB device, 40 held by others: the plan goes by the free memory ({m.group(0) if m else None})")
    os.environ["PC_EMU_DEVICE_OTHERS_MIB"] = str(80 * 1024)
    d, p = launch("compress-emu-full-device", 1, True, "compress.importance=magnitude", check=False)
    err = p.stdout + p.stderr
    pclib.check(p.returncode != 0 and "the free memory of the cuda device" in err and "80.0 GiB in all" in err
                and "try " in err and not os.path.exists(os.path.join(d, "final")),
                f"a device held by others: exit {p.returncode}, {err[-500:]}")
    run("compress-emu-full-device-gib", 1, True, "compress.importance=magnitude", "backend.memory_gib=1")
    del os.environ["PC_EMU_DEVICE_OTHERS_MIB"]
    # backend.matmul bf16: W_C rounded on the device, broadcast in bf16 over the NCCL comm,
    # the products reading the bf16 weight copy; against the CPU backend's bf16 run
    # (attention pinned to fp32, which backend.attention auto would make bf16 here: these
    # runs check the products' operands, and the CPU computes attention in fp32)
    sets = ["compress.split_mb=0.01", "backend.matmul=bf16", "backend.attention=fp32"]
    a = pclib.run_arrays(run("bf16-emu", 2, True, *sets, nccl))
    logged_vs_plan(os.path.join(root, "bf16-emu"), 2)
    b = pclib.run_arrays(run("bf16-cpu", 2, False, *sets))
    f32 = pclib.run_arrays(os.path.join(root, "compress-split-emu"))
    rel = np.max(np.abs(a[0] - b[0]) / np.abs(b[0]))
    pclib.check(rel < 1e-3 and not np.array_equal(a[0], f32[0]),
                f"bf16 weights np2: emulated CUDA vs CPU losses max rel {rel:.2e} < 1e-3 (and not the fp32 run's)")
    sets += ["compress.shard_grads=true", "compress.store_grads=false"]  # the update recomputes on the device
    a = pclib.run_arrays(run("shard-bf16-emu", 2, True, *sets, nccl))
    logged_vs_plan(os.path.join(root, "shard-bf16-emu"), 2)
    b = pclib.run_arrays(run("shard-bf16-cpu", 2, False, *sets))
    rel = np.max(np.abs(a[0] - b[0]) / np.abs(b[0]))
    pclib.check(rel < 1e-3, f"sharded G, bf16 weights np2: emulated CUDA vs CPU losses max rel {rel:.2e} < 1e-3")
    # bf16 products and attention, as the job files run: each layer's q, k, v and attention
    # output kept in bf16 only, against the CPU's bf16 products with fp32 attention
    d = run("bf16-attn-emu", 1, True, "backend.matmul=bf16", "backend.attention=bf16")
    a, b = pclib.run_arrays(d), pclib.run_arrays(run("bf16-attn-cpu", 1, False, "backend.matmul=bf16"))
    r0, r1 = abs(a[0][0] - b[0][0]) / b[0][0], abs(a[0][-1] - b[0][-1]) / b[0][-1]
    pclib.check(r0 < 1e-2 and r1 < 2e-2, f"bf16 products and attention vs CPU bf16 products: first loss rel {r0:.2e}, "
                f"last {r1:.2e}")
    pclib.check("q, k, v kept in bf16 only" in open(os.path.join(d, "logs", "rank-00000.log")).read(),
                "bf16 attention: the log says q, k, v are kept in bf16")
    log = open(os.path.join(d, "logs", "rank-00000.log")).read()
    pclib.check("attention bf16 copies: 0 bytes here (plan: 0)" in log,
                "bf16 products and attention: dO arrives in bf16, so attention makes no copies, as planned")
    # the same run with every kernel's blocks in another order: the same bits (no result
    # depends on the order blocks run in, as on a GPU, which promises none)
    os.environ["PC_EMU_BLOCK_ORDER"] = "shuffle"
    shuffled = run("bf16-attn-emu-shuffled", 1, True, "backend.matmul=bf16", "backend.attention=bf16")
    del os.environ["PC_EMU_BLOCK_ORDER"]
    pclib.same_outputs(pclib.run_outputs(shuffled), pclib.run_outputs(d), "bf16 products and attention, blocks "
                       "shuffled vs in order")
    # that job with backend.attention cudnn, the backend's cuDNN route around the
    # emulator's stand-in for cuDNN (tests/gpu/cudnn_emu.cpp: the kernels behind cuDNN's
    # contract of bf16 results)
    os.environ["PC_EMU_CUDNN"] = "1"
    dc = run("cudnn-standin-emu", 1, True, "backend.matmul=bf16", "backend.attention=cudnn")
    del os.environ["PC_EMU_CUDNN"]
    c = pclib.run_arrays(dc)
    r0, r1 = abs(c[0][0] - b[0][0]) / b[0][0], abs(c[0][-1] - b[0][-1]) / b[0][-1]
    pclib.check(r0 < 1e-2 and r1 < 2e-2 and "attention bf16 by cuDNN stand-in" in
                open(os.path.join(dc, "logs", "rank-00000.log")).read(),
                f"backend.attention cudnn (the emulator's stand-in) vs CPU bf16 products: first loss rel {r0:.2e}, "
                f"last {r1:.2e}")
    # backend.attention auto (the default) with bf16 products: each rank times projcompd's
    # kernels and cuDNN's attention and compares their results (daemon/attn_auto.c). Where
    # cuDNN cannot load (this build), fails its calls (a shape it takes no engine for) or
    # disagrees, the job runs the kernels: bit for bit the bf16 attention run
    for name, standin, why in [
            ("auto-emu", None, "cuDNN's attention cannot run here: this build has no cuDNN"),
            ("auto-refuse-emu", "refuse", "cuDNN's attention cannot run here: cuDNN stand-in (PC_EMU_CUDNN=refuse): "
             "no engine for B 2 T 16 H 4 KV 2 hd 16"),
            ("auto-wrong-emu", "wrong", "cuDNN's results differ from projcompd's kernels' by")]:
        if standin:
            os.environ["PC_EMU_CUDNN"] = standin
        da = run(name, 1, True, "backend.matmul=bf16")
        os.environ.pop("PC_EMU_CUDNN", None)
        log = open(os.path.join(da, "logs", "rank-00000.log")).read()
        pclib.check(why in log and "attention auto: projcompd's kernels (cuDNN cannot run or disagrees on 1 of 1 "
                    "ranks)" in log and "by cuDNN" not in log, f"{name}: the kernels, and the log says why")
        pclib.same_outputs(pclib.run_outputs(da), pclib.run_outputs(d), f"{name} vs backend.attention bf16")
    # with the stand-in (the kernels behind cuDNN's contract, so the two agree) on 2 ranks:
    # both ranks log the same times and take the same route, cuDNN's where its mean time is
    # under 0.95 of the kernels' (the emulator's times mean nothing, so either may win here)
    os.environ["PC_EMU_CUDNN"] = "1"
    da = run("auto-standin-emu", 2, True, "backend.matmul=bf16", nccl)
    del os.environ["PC_EMU_CUDNN"]
    picks = []
    for rank in range(2):
        log = open(os.path.join(da, "logs", f"rank-{rank:05d}.log")).read()
        m = re.search(r"attention auto: a forward and backward at B 2 T 16 heads 4/2 of 16 take (\S+) ms by cuDNN, "
                      r"(\S+) ms by projcompd's kernels \(mean of 2 ranks; results within (\S+) here\): using "
                      r"(cuDNN's attention|projcompd's kernels)", log)
        pclib.check(m is not None, f"auto-standin-emu rank {rank}: the probe's times and choice logged")
        by_cudnn = m.group(4) == "cuDNN's attention"
        pclib.check(float(m.group(3)) <= 2e-2 and by_cudnn == (float(m.group(1)) < 0.95 * float(m.group(2))) and
                    by_cudnn == ("attention bf16 by cuDNN stand-in" in log),
                    f"auto-standin-emu rank {rank}: {m.group(0)}; the backend runs what was chosen")
        picks.append(m.group(1, 2, 4))
    c = pclib.run_arrays(da)
    r0, r1 = abs(c[0][0] - a[0][0]) / a[0][0], abs(c[0][-1] - a[0][-1]) / a[0][-1]
    pclib.check(picks[0] == picks[1] and r0 < 1e-2 and r1 < 2e-2,
                f"auto-standin-emu: both ranks chose {picks[0][2]}; losses vs the 1-rank bf16 attention run: first "
                f"rel {r0:.2e}, last {r1:.2e}")
    # a device whose shared memory per block is too small for the tensor-core kernels at
    # this head_dim (PC_EMU_SMEM_OPTIN): attention falls back to fp32, and the plan counts
    # what that holds (no bf16 q, k, v, no dO copy), not what the shape rule assumes
    os.environ["PC_EMU_SMEM_OPTIN"] = "1024"
    d = run("bf16-attn-small-smem-emu", 1, True, "backend.matmul=bf16", "backend.attention=bf16")
    del os.environ["PC_EMU_SMEM_OPTIN"]
    log = open(os.path.join(d, "logs", "rank-00000.log")).read()
    pclib.check("attention bf16 copies: 0 bytes here (plan: 0)" in log and "q, k, v kept in bf16 only" not in log,
                "1 KiB of shared memory a block: fp32 attention, and the plan counts no bf16 copies")
    # backend.attention cudnn where cuDNN cannot run (the emulator's build has none): the
    # rank stops before training, naming the key and the reason, and writes no model
    d, p = launch("cudnn-emu", 1, True, "backend.matmul=bf16", "backend.attention=cudnn", check=False)
    pclib.check(p.returncode != 0 and "backend.attention is 'cudnn' but rank 0 cannot run cuDNN's attention: this "
                "build has no cuDNN" in p.stderr + p.stdout and not os.path.exists(os.path.join(d, "final")),
                f"backend.attention cudnn without cuDNN: exit {p.returncode}, the key and the reason named, no model")
    # distillation from a bf16 teacher (model.dtype bf16: matrices loaded rounded into the
    # bf16 copy only, products from bf16 operands) beside an fp32 student
    sets = ["distill.enabled=true", "model.dtype=bf16"]
    d = run("distill-bf16-emu", 1, True, *sets)
    a, b = pclib.run_arrays(d), pclib.run_arrays(run("distill-bf16-cpu", 1, False, *sets))
    rel = np.max(np.abs(a[0] - b[0]) / np.abs(b[0]))
    pclib.check(rel < 1e-3 and "distillation from the base (bf16 weights)" in open(os.path.join(d, "logs",
                "rank-00000.log")).read(), f"bf16 teacher: emulated CUDA vs CPU losses max rel {rel:.2e} < 1e-3")
    sets += ["backend.matmul=bf16", "backend.attention=fp32"]
    a, b = pclib.run_arrays(run("distill-mm16-emu", 1, True, *sets)), pclib.run_arrays(run("distill-mm16-cpu", 1,
                                                                                           False, *sets))
    logged_vs_plan(os.path.join(root, "distill-mm16-emu"), 1)
    rel = np.max(np.abs(a[0] - b[0]) / np.abs(b[0]))
    pclib.check(rel < 1e-3, f"bf16 teacher, bf16 products: emulated CUDA vs CPU losses max rel {rel:.2e} < 1e-3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
