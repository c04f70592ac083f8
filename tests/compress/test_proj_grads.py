"""Projected Compression gradients against PyTorch autograd.

A tiny GQA Llama (explicit head_dim, llama3 rope scaling) is created by stock
transformers, tied and untied. proj_check builds W_C = P_out W P_in + A for every matrix
(embedding and head included) with perturbed projections, runs the small model forward
and backward, and writes the gradients of every P_in, P_out, A and norm gain. The same
W_C is built from the same tensors in torch (float64) and differentiated by autograd
through transformers' own LlamaForCausalLM (functional_call). A third case cuts the
input-only matrices into row blocks and o_proj into column blocks, whose P_in / P_out
gradients are sums over blocks.
Tolerances: loss 1e-5 relative; each gradient max|ours - ref| <= 2e-5 x max|ref|."""
import os
import subprocess
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from torch.nn.utils.stateless import functional_call
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

B, T, V, D, F, DC, FC = 2, 12, 97, 64, 96, 40, 56


def base_config(tied):
    return dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
                tie_word_embeddings=tied, max_position_embeddings=64)


def case(root, tied, split=False):
    name = ("tied" if tied else "untied") + ("-split" if split else "")
    torch.manual_seed(11 if tied else 12)
    base = LlamaForCausalLM(LlamaConfig(**base_config(tied)))
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0, 0.1) if p.dim() == 2 else p.uniform_(0.5, 1.5)
    bdir = os.path.join(root, name)
    base.save_pretrained(bdir, safe_serialization=True)
    rng = np.random.default_rng(5)
    toks = rng.integers(0, V, size=(B, T + 1))
    tokens, targets = toks[:, :-1], toks[:, 1:].copy()
    targets[0, 3] = -1  # an ignored position
    tok_file = os.path.join(root, name + ".i32")
    np.concatenate([tokens.ravel(), targets.ravel()]).astype("<i4").tofile(tok_file)
    out = os.path.join(root, name + "-out.safetensors")
    pclib.run([os.path.join(pclib.BUILD, "tests", "compress", "proj_check"), bdir, tok_file, str(B), str(T),
               str(DC), str(FC), out, "3"] + (["split"] if split else []))
    dump = load_file(out)

    scfg = base_config(False)
    scfg.update(hidden_size=DC, intermediate_size=FC)
    small = LlamaForCausalLM(LlamaConfig(**scfg)).double()
    small.config._attn_implementation = "eager"
    base_sd = {k: v.double() for k, v in base.state_dict().items()}
    leaves, params = {}, {}
    for pname, p in small.named_parameters():
        if p.dim() == 1:
            leaves[pname] = torch.tensor(dump[pname], dtype=torch.float64, requires_grad=True)
            params[pname] = leaves[pname]
            continue
        w = base_sd["model.embed_tokens.weight" if (pname == "lm_head.weight" and tied) else pname]
        wc = w
        if pname + ".p_out" in dump:
            po = torch.tensor(dump[pname + ".p_out"], dtype=torch.float64).reshape(-1, w.shape[0]).requires_grad_()
            leaves[pname + ".p_out"] = po
            wc = po @ wc
        if pname + ".p_in" in dump:
            pi = torch.tensor(dump[pname + ".p_in"], dtype=torch.float64).reshape(w.shape[1], -1).requires_grad_()
            leaves[pname + ".p_in"] = pi
            wc = wc @ pi
        a = torch.tensor(dump[pname + ".a"], dtype=torch.float64).reshape(p.shape).requires_grad_()
        leaves[pname + ".a"] = a
        params[pname] = wc + a
    logits = functional_call(small, params, (torch.tensor(tokens),)).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.tensor(targets).reshape(-1),
                                             ignore_index=-1)
    loss.backward()
    ours = float(dump["loss"][0])
    pclib.check(abs(ours - loss.item()) / loss.item() < 1e-5, f"{name}: loss {ours:.7f} vs torch {loss.item():.7f}")
    kinds = {"p_in": 0, "p_out": 0, "a": 0, "norm": 0}
    worst = 0.0
    for key, leaf in leaves.items():
        ref = leaf.grad.numpy().ravel()
        got = dump["grad." + key].astype(np.float64)
        err = np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-12)
        worst = max(worst, err)
        if err > 2e-5:
            raise SystemExit(f"FAIL: {name}: gradient of {key}: relative error {err:.2e}")
        kinds[key.rsplit(".", 1)[-1] if key.rsplit(".", 1)[-1] in kinds else "norm"] += 1
    pclib.check(kinds["p_in"] == 2 * 6 + 2 and kinds["p_out"] == 2 * 4 and kinds["a"] == 2 * 7 + 2,
                f"{name}: every projection present {kinds}")
    pclib.check(True, f"{name}: {len(leaves)} gradients match autograd (worst relative error {worst:.2e})")


def main():
    root = pclib.tmpdir("pc-proj-")
    case(root, tied=False)
    case(root, tied=True)
    # row blocks of q/k/v/embedding/head and column blocks of o_proj: shared factors
    case(root, tied=True, split=True)


if __name__ == "__main__":
    main()
