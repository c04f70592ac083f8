"""eval mode against stock transformers: models created and saved by transformers
(tied and untied, single file and sharded, f32 and bf16) are evaluated by projcompd on
2 ranks; the validation loss must equal the loss transformers computes on the same
windows (fp32 math on both sides; bf16 weights are upcast exactly). Tolerance: 2e-5
relative. The bf16 models again with backend.matmul bf16 (the matrices held in bf16 only,
products from bf16 operands), against transformers with bf16 products: 1e-4 (an operand
that rounds to the other side of a bf16 boundary in one of the two moves a logit by up
to 2^-8 relative, and later positions attend to it), and not the fp32 loss. A config.json without rms_norm_eps, rope_theta and the
token ids reads with transformers' defaults, as transformers reads it. Eval runs on any
rank count (3 here, which train.global_batch does not divide) to the same loss."""
import json
import os
import sys
import zlib

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

SEQ, WINDOWS, VOCAB = 24, 8, 301


def case(root, name, tied, dtype, shard, drop=()):
    torch.manual_seed(zlib.crc32(name.encode()) % 1000)  # the same models every run (hash() is salted)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=24, rope_theta=5000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                      tie_word_embeddings=tied, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the default init so that losses differ
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model = model.to(dtype)
    mdir = os.path.join(root, name)
    model.save_pretrained(mdir, safe_serialization=True, max_shard_size="40KB" if shard else "1GB")
    if shard:
        pclib.check(os.path.exists(os.path.join(mdir, "model.safetensors.index.json")), f"{name}: sharded save")
    if drop:  # keys a config.json may leave out: both sides then take transformers' defaults
        path = os.path.join(mdir, "config.json")
        c = json.load(open(path))
        pclib.check(all(k in c for k in drop), f"{name}: the saved config has {drop}")
        json.dump({k: v for k, v in c.items() if k not in drop}, open(path, "w"))

    tokens = pclib.markov_tokens(SEQ * WINDOWS + 1 + 50, VOCAB, seed=3)
    data = os.path.join(root, name + ".h5")
    pclib.write_shard(data, tokens, VOCAB)
    job = os.path.join(root, name + ".yaml")
    run_dir = os.path.join(root, name + "-run")
    pclib.write_yaml(job, {
        "run": {"dir": run_dir, "mode": "eval"},
        "model": {"base": mdir},
        "data": {"valid": [data], "seq_len": SEQ},
        "train": {"global_batch": 2, "micro_batch": 1},
        "eval": {"batches": WINDOWS},
        "backend": {"device": "cpu"},
    })
    pclib.projcompd(2, job)
    ours = pclib.last_val_loss(run_dir)
    ref = pclib.hf_val_loss(mdir, tokens, SEQ, WINDOWS)
    rel = abs(ours - ref) / abs(ref)
    pclib.check(rel < 2e-5, f"{name}: projcompd val_loss {ours:.7f} vs transformers {ref:.7f} (rel {rel:.2e})")
    if name == "untied-f32":  # 3 ranks, which train.global_batch 2 does not divide: eval trains nothing
        pclib.projcompd(3, job, f"run.dir={run_dir}-np3")
        ours3 = pclib.last_val_loss(run_dir + "-np3")
        pclib.check(abs(ours3 - ours) <= 1e-6 * abs(ours), f"{name} on 3 ranks: val_loss {ours3:.7f} (2 ranks {ours:.7f})")
    if dtype == torch.bfloat16:  # bf16 products from a model that holds its matrices in bf16 only
        d16 = run_dir + "-matmul-bf16"
        pclib.projcompd(2, job, f"run.dir={d16}", "backend.matmul=bf16")
        ours16 = pclib.last_val_loss(d16)
        ref16 = pclib.hf_val_loss(mdir, tokens, SEQ, WINDOWS, bf16=True)
        rel16 = abs(ours16 - ref16) / abs(ref16)
        pclib.check(rel16 < 1e-4 and ours16 != ours,
                    f"{name} backend.matmul bf16: val_loss {ours16:.7f} vs transformers with bf16 products "
                    f"{ref16:.7f} (rel {rel16:.1e}), not the fp32 {ours:.7f}")


def main():
    root = pclib.tmpdir("pc-eval-")
    case(root, "untied-f32", False, torch.float32, False)
    case(root, "tied-f32-sharded", True, torch.float32, True)
    case(root, "untied-bf16-sharded", False, torch.bfloat16, True)
    case(root, "tied-bf16", True, torch.bfloat16, False)
    case(root, "untied-f32-sparse-config", False, torch.float32, False,
         drop=("rms_norm_eps", "rope_theta", "bos_token_id", "eos_token_id"))


if __name__ == "__main__":
    main()
