"""bench-gpu on the SIMT emulator (bench-gpu-emu: bench_gpu.c linked against the CUDA
backend's sources built for the host), so that the benchmark a GPU lease runs first has
run before it gets there: one decoder layer of its model (32/8 heads of 64) made tiny
(d 128, d_ff 256, vocab 512: the emulated cuBLAS is a host loop), B 1 x T 16, bf16
products and tensor-core attention, one timed step and one profiled step.
- it exits 0 and prints its tokens/s, MFU and peak memory lines;
- its loss is a random model's: finite and within 0.1 of ln(vocab) (weights of std 0.02
  give nearly uniform logits; the op-by-op correctness is test_cuda_llama's);
- the op profile (-prof 1) has a region for each op a bf16 step runs, with the calls one
  step makes: per layer a fused qkv, o, gate/up and down product forward, and for each
  a weight gradient and an input gradient backward, plus the head's forward, gradient
  and input gradient: 3 + 4 x 3 = 15 cuBLAS products in bf16, the gate/up forward's and
  the down and o input gradients written in bf16 (gemm bf16 to bf16: 3, only the SwiGLU
  or the attention backward reads them), the other 12 in fp32;
  the RMSNorms (two per
  layer and the final one), the SwiGLU and the attention write their outputs, read only
  by products (and the attention backward's D), in bf16 (rmsnorm_fwd_16, swiglu_fwd_16,
  attention_fwd bf16), the layer's two also copying the residual stream that o_proj and
  down_proj add to (rmsnorm_fwd_16, x copy: 2, the final one plain: 1), so no forward
  product's input is rounded on its own (no gemm
  operand to bf16); each backward product's output gradient is written in bf16 once for both
  its products, by the pass that makes it, and never rounded on its own (no round_bf16): the
  residual gradient down and o read by the RMSNorm backwards (rmsnorm_bwd_16: 3, no fp32
  rmsnorm_bwd), qkv's dq and dk rotated back as they are rounded (rope_bwd bf16: 2, no
  fp32 rope_bwd) and dv rounded beside them (round_bf16 dv), the gate|up gradient
  by the SwiGLU backward (swiglu_bwd_16) and the head's dlogits by the loss's backward
  (xent_bwd_16), neither rounded on its own; q and k rotated straight into their bf16
  copies (rope_fwd bf16: 2, no fp32 rope_fwd) and v rounded beside them (round_bf16 v),
  which the attention forward and backward on tensor cores read (no copies of q, k, v;
  dO comes in bf16 from o_proj's backward, so the D pass reads it and copies nothing:
  attention_bwd D from bf16 dO, and no D or dO copy of their own); the loss forward; the
  regions' total and its share of the wall time;
- with -groups 0 -dkv 0 the attention's forward, dQ and dK/dV kernels are tuned at the
  step's shape (the emulator's default is their first variants), and the tuned shapes are
  listed with each variant's time and the pick;
- -heads 4 -kv 2 -hd 128 gives the model that attention shape (one variant of each kernel
  at head_dim 128, none tuned)."""
import math
import re
import subprocess
import sys


def main():
    exe = sys.argv[1]
    vocab = 512
    args = [exe, "-B", "1", "-T", "16", "-layers", "1", "-d", "128", "-ff", "256", "-vocab", str(vocab), "-steps", "1",
            "-warmup", "1", "-bf16", "1", "-attn", "1", "-prof", "1", "-groups", "0", "-dkv", "0"]
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=500)
    print(p.stdout)
    fails = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            fails.append(what)

    check(p.returncode == 0, f"bench-gpu exits 0 (got {p.returncode})")
    for line in ["tokens/s", "MFU", "peak device memory in use", "op profile of 1 more step(s)"]:
        check(line in p.stdout, f"it prints '{line}'")
    m = re.search(r"^loss ([0-9.]+)", p.stdout, re.M)
    check(m is not None and abs(float(m.group(1)) - math.log(vocab)) < 0.1,
          f"loss {m.group(1) if m else '?'} is ln({vocab}) = {math.log(vocab):.4f} within 0.1")
    calls = {}
    for line in p.stdout.splitlines():
        r = re.match(r"^(\S.{0,27}?)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)%", line)
        if r:
            calls[r.group(1).strip()] = int(r.group(2))
    want = {"gemm bf16": 12, "gemm bf16 to bf16": 3, "rmsnorm_fwd_16": 1, "rmsnorm_fwd_16, x copy": 2,
            "rmsnorm_fwd": None, "rmsnorm_bwd": None, "rmsnorm_bwd_16": 3,
            "attention_fwd bf16": 1,
            "attention_fwd bf16 copies": None, "attention_bwd D": None, "attention_bwd D, dO copy": None,
            "attention_bwd D from bf16 dO": 1,
            "attention_bwd bf16 copies": None, "attention_bwd bf16 dO copy": None, "attention_bwd bf16 dQ": 1,
            "attention_bwd bf16 dK dV": 1,
            "attention_bwd bf16": None, "xent_fwd": 1, "xent_bwd_16": 1, "xent_bwd": None, "gemm operand to bf16": None,
            "round_bf16": None, "swiglu_fwd_16": 1, "swiglu_fwd": None, "swiglu_bwd_16": 1, "swiglu_bwd": None,
            "rope_fwd": None, "rope_fwd bf16": 2, "round_bf16 v": 1, "rope_bwd": None, "rope_bwd bf16": 2,
            "round_bf16 dv": 1}
    for name, n in want.items():
        check(calls.get(name) == n, f"profile: {name}: {calls.get(name)} calls (want {n})")
    check(re.search(r"^all regions\s+[0-9.]+\s+\([0-9.]+% of [0-9.]+ ms wall\)", p.stdout, re.M) is not None,
          "profile: the regions' total against the profiled step's wall time")
    for kernel, n in (("forward", 2), ("dQ", 2), ("dK dV", 3)):
        variants = r" \d \([^)]+\) [0-9.]+ ms [0-9.]+ TFLOP/s," * n
        check(re.search(rf"^attention_tc {kernel} B 1 T 16 H 32 KV 8 hd 64:{variants} picked [1-{n}]$", p.stdout,
                        re.M) is not None, f"the {kernel} kernel tuned at the step's shape, its {n} variants listed")
    q = subprocess.run(args[:args.index("-prof")] + ["-heads", "4", "-kv", "2", "-hd", "128", "-groups", "0"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=500)
    print(q.stdout)
    check(q.returncode == 0 and re.search(r"heads 4/2 x 128", q.stdout) is not None,
          f"-heads 4 -kv 2 -hd 128: exits 0 (got {q.returncode}) with that model")
    check("attention_tc" not in q.stdout, "at head_dim 128 no kernel has variants to tune")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
