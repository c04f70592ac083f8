"""bench_model: forward+backward tokens/s of the C CPU backend vs PyTorch CPU.

Runs bench-model (build dir from PC_BUILD or --build) and the identical model and batch
as a transformers LlamaForCausalLM (fp32, eager attention) with the same thread count,
then prints both throughputs and their ratio.

  python tests/model/bench_model.py [--build build] [--threads 2] [--d 256] [--layers 4]
      [--heads 4] [--kv 2] [--head-dim 64] [--ff 688] [--vocab 8192] [--B 4] [--T 128] [--iters 10]
      [--coretype SKYLAKEX]   (OPENBLAS_CORETYPE for bench-model; default: inherited)
"""
import argparse
import json
import os
import subprocess
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM


def bench_torch(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.d, intermediate_size=a.ff, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, num_key_value_heads=a.kv, head_dim=a.head_dim,
                      max_position_embeddings=a.T, tie_word_embeddings=False, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float().train()
    tok = torch.randint(0, a.vocab, (a.B, a.T))
    tgt = torch.randint(0, a.vocab, (a.B, a.T))

    def step():
        model.zero_grad(set_to_none=False)
        logits = model(tok).logits
        loss = F.cross_entropy(logits.view(-1, a.vocab), tgt.view(-1))
        loss.backward()

    step()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        step()
    dt = (time.perf_counter() - t0) / a.iters
    return a.B * a.T / dt, dt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default=os.environ.get("PC_BUILD", "build"))
    for k, v in dict(threads=2, d=256, layers=4, heads=4, kv=2, head_dim=64, ff=688, vocab=8192, B=4, T=128,
                     iters=10).items():
        p.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    p.add_argument("--coretype", default=None)
    a = p.parse_args()
    exe = os.path.join(a.build, "tests", "model", "bench-model")
    args = [exe] + ["%s=%d" % (k, getattr(a, k)) for k in
                    ("d", "layers", "heads", "kv", "head_dim", "ff", "vocab", "B", "T", "iters", "threads")]
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.threads))
    if a.coretype:
        env["OPENBLAS_CORETYPE"] = a.coretype
    c = json.loads(subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout)
    t_tps, t_dt = bench_torch(a)
    print("model d=%d layers=%d heads=%d/%d hd=%d ff=%d vocab=%d B=%d T=%d threads=%d params=%d"
          % (a.d, a.layers, a.heads, a.kv, a.head_dim, a.ff, a.vocab, a.B, a.T, a.threads, c["params"]))
    print("projcompd cpu : %8.1f tokens/s  %7.1f ms/iter  %.1f GFLOP/s  (%s)" % (
        c["tokens_per_s"], c["ms_per_iter"], c["gflops"], c["info"]))
    print("pytorch cpu   : %8.1f tokens/s  %7.1f ms/iter  (torch %s)" % (t_tps, t_dt * 1e3, torch.__version__))
    print("ratio (projcompd / pytorch): %.2f" % (c["tokens_per_s"] / t_tps))


if __name__ == "__main__":
    main()
