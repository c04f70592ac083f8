"""test_llama: the C Llama forward/backward against stock transformers (fp32, eager).

Builds tiny random LlamaForCausalLM models (GQA, explicit head_dim, llama3 rope
scaling, tied and untied embeddings), saves them with save_pretrained (safetensors),
runs llama_check on the same tokens and compares with torch autograd:
  logits: max|c - ref| <= LOGIT_TOL * max|ref|
  loss:   |c - ref| <= LOSS_TOL * |ref|
  every parameter gradient: max|c - ref| <= GRAD_TOL * max|ref| (per tensor)
Also: two micro-batches of B=1 accumulate to the gradient of one B=2 batch, and the
loader rejects a missing tensor, a wrong shape and a non-finite weight, naming it; a
model written by llama_save_safetensors loads in transformers with identical logits.
"""
import copy
import os
import re
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from safetensors.numpy import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError as exc:  # pragma: no cover
    print("skip: %s" % exc)
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

LOGIT_TOL = 2e-6
LOSS_TOL = 1e-6
GRAD_TOL = 5e-6
ACCUM_TOL = 1e-6

BUILD = os.environ.get("PC_BUILD", "build")
TOOL = os.path.join(BUILD, "tests", "model", "llama_check")

failures = []


def check(ok, msg):
    print(("ok   " if ok else "FAIL ") + msg)
    if not ok:
        failures.append(msg)


def make_model(d, tmp, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=d["vocab"], hidden_size=d["hidden"], intermediate_size=d["ff"],
        num_hidden_layers=d["layers"], num_attention_heads=d["heads"], num_key_value_heads=d["kv"],
        head_dim=d["head_dim"], max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=d["theta"],
        rope_scaling=d.get("rope_scaling"), tie_word_embeddings=d["tied"], initializer_range=0.1,
        attn_implementation="eager", torch_dtype="float32")
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # non-trivial norm gains
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    path = os.path.join(tmp, d["name"])
    model.save_pretrained(path, safe_serialization=True)
    model.eval()
    return model, path


def make_tokens(V, B, T, seed, ignore):
    g = np.random.default_rng(seed)
    seq = g.integers(0, V, size=(B, T + 1)).astype(np.int32)
    tokens, targets = seq[:, :T].copy(), seq[:, 1:].copy()  # targets[t] = tokens[t+1]
    if ignore:
        targets[0, 3] = -1
        targets[-1, T - 1] = -1
    return tokens, targets


def run_tool(path, tokens, targets, tmp, micro=1, expect_ok=True, save=None, matmul="fp32", chunk=0):
    B, T = tokens.shape
    tokf = os.path.join(tmp, "tokens.i32")
    np.concatenate([tokens.ravel(), targets.ravel()]).astype("<i4").tofile(tokf)
    out = os.path.join(tmp, "out.safetensors")
    if os.path.exists(out):
        os.remove(out)
    args = [TOOL, path, tokf, str(B), str(T), out, "--micro", str(micro), "--matmul", matmul,
            "--logits-chunk", str(chunk)]
    if save:
        args += ["--save", save]
    r = subprocess.run(args, capture_output=True, text=True)
    if not expect_ok:
        return r
    if r.returncode != 0:
        raise RuntimeError("llama_check failed: %s" % r.stderr)
    return load_file(out)


def reference(model, tokens, targets):
    model.zero_grad()
    logits = model(torch.from_numpy(tokens.astype(np.int64))).logits
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets.astype(np.int64)).reshape(-1),
                           ignore_index=-1)
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    return logits.detach().numpy(), float(loss), grads


def reference_bf16(model, tokens, targets):
    """reference() with every nn.Linear computed from bf16-rounded operands (attention
    products stay fp32)."""
    with pclib.bf16_products():
        return reference(model, tokens, targets)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_flipped_logits(tag, got, want):
    """bf16 logits against a bf16 reference: a value that fp32 summation-order differences
    put on the other side of a bf16 boundary moves by 2^-8 (3.9e-3) and moves the logits
    of its token (and, through attention, of later ones) by up to about 1e-2 of the
    largest; every other token's logits agree within 1e-5, and at most one token in 8 is
    moved."""
    per_tok = np.abs(got - want).reshape(-1, got.shape[-1]).max(-1) / max(np.max(np.abs(want)), 1e-30)
    moved = int(np.sum(per_tok > 1e-5))
    check(per_tok.max() <= 1e-2 and moved <= max(1, per_tok.size // 8),
          "%s logits rel err %.2e <= 1e-2; %d of %d tokens beyond 1e-5 (bf16 boundary flips, at most %d)"
          % (tag, per_tok.max(), moved, per_tok.size, max(1, per_tok.size // 8)))


def compare(tag, out, logits, loss, grads, model, logit_tol=None, loss_tol=None, grad_tol=None):
    """logit_tol "flips": check_flipped_logits"""
    logit_tol, loss_tol = logit_tol or LOGIT_TOL, loss_tol or LOSS_TOL
    grad_tol = grad_tol or GRAD_TOL
    if logits is not None and logit_tol == "flips":
        check_flipped_logits(tag, out["logits"], logits)
    elif logits is not None:  # None: a chunked head, which never holds the logits whole
        r = rel(out["logits"], logits)
        check(r <= logit_tol, "%s logits rel err %.2e <= %.0e" % (tag, r, logit_tol))
    r = abs(float(out["loss"][0]) - loss) / abs(loss)
    check(r <= loss_tol, "%s loss %.7f vs %.7f rel err %.2e <= %.0e" % (tag, out["loss"][0], loss, r, loss_tol))
    worst, wname = 0.0, ""
    names = [n for n, _ in model.named_parameters()]
    for n in names:
        key = "grad." + n
        if key not in out:
            check(False, "%s gradient %s missing from llama_check output" % (tag, n))
            continue
        if out[key].shape != grads[n].shape:
            check(False, "%s gradient %s shape %s vs %s" % (tag, n, out[key].shape, grads[n].shape))
            continue
        r = rel(out[key], grads[n])
        if r > worst:
            worst, wname = r, n
        if r > grad_tol:
            check(False, "%s gradient %s rel err %.2e > %.0e" % (tag, n, r, grad_tol))
    check(len([k for k in out if k.startswith("grad.")]) == len(names),
          "%s llama_check writes exactly the %d parameter gradients" % (tag, len(names)))
    print("     %s worst gradient rel err %.2e (%s)" % (tag, worst, wname))
    return worst


CASES = [
    dict(name="untied_gqa", vocab=300, hidden=64, ff=96, layers=2, heads=4, kv=2, head_dim=16, theta=10000.0,
         tied=False),
    dict(name="tied_hd24_llama3", vocab=300, hidden=64, ff=96, layers=2, heads=4, kv=2, head_dim=24,
         theta=500000.0, tied=True,
         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=32)),
    dict(name="mha_untied", vocab=257, hidden=48, ff=80, layers=3, heads=3, kv=3, head_dim=16, theta=10000.0,
         tied=False),
]


def main():
    if not os.path.exists(TOOL):
        print("llama_check not built at %s" % TOOL)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            model, path = make_model(case, tmp, seed=10 + i)
            tokens, targets = make_tokens(case["vocab"], 2, 24, seed=i, ignore=True)
            saved = os.path.join(tmp, case["name"] + "_saved")
            out = run_tool(path, tokens, targets, tmp, save=saved)
            logits, loss, grads = reference(model, tokens, targets)
            compare(case["name"], out, logits, loss, grads, model)
            # train.logits_chunk: the head and loss 7 of the 48 tokens at a time (the last
            # chunk 6), differentiated in the forward pass: the same reference
            outc = run_tool(path, tokens, targets, tmp, chunk=7)
            check("logits" not in outc, "%s logits chunk 7: no whole logits written" % case["name"])
            compare(case["name"] + " logits chunk 7", outc, None, loss, grads, model)
            # llama_save_safetensors output loads in stock transformers with equal logits
            again = LlamaForCausalLM.from_pretrained(saved, attn_implementation="eager").float().eval()
            with torch.no_grad():
                l2 = again(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
            check(np.array_equal(l2, logits) and again.config.tie_word_embeddings == case["tied"],
                  "%s saved model reloads in transformers with identical logits" % case["name"])
            # backend.matmul bf16: every gemm input, the gate and up outputs and down_proj's
            # input gradient rounded to bf16, against Bf16Linear and pclib's MLP (the
            # reference rounds the same values). Where fp32 summation-order differences make a value
            # round to the other side of a bf16 boundary it moves by 2^-8 (3.9e-3), and such
            # flips spread through the backward pass: logits as check_flipped_logits,
            # gradients within 1e-2, and every gradient closer to the bf16 reference than
            # to the fp32 one.
            out16 = run_tool(path, tokens, targets, tmp, matmul="bf16")
            l16, loss16, g16 = reference_bf16(model, tokens, targets)
            w16 = compare(case["name"] + " bf16", out16, l16, loss16, g16, model, "flips", 1e-4, 1e-2)
            r = rel(out16["logits"], logits)
            check(r > 5e-3, "%s bf16 logits differ from fp32 by %.2e (inputs rounded)" % (case["name"], r))
            w32 = max(rel(out16["grad." + n], grads[n]) for n in grads)
            check(w16 < w32 / 2, "%s bf16 gradients: %.2e from the bf16 reference, %.2e from fp32"
                  % (case["name"], w16, w32))
            # the same products from the model's bf16 weight copy (llama_use_bf16_weights):
            # the same reference, and on the CPU the very same numbers
            out16w = run_tool(path, tokens, targets, tmp, matmul="bf16w")
            compare(case["name"] + " bf16 weight copy", out16w, l16, loss16, g16, model, "flips", 1e-4, 1e-2)
            check(all(np.array_equal(out16w[k], out16[k]) for k in out16),
                  "%s bf16 weight copy: logits, loss and gradients bitwise those of rounding per product"
                  % case["name"])
            # a bf16 checkpoint in a model that holds its matrices in bf16 only (the bf16
            # distillation teacher): the bf16 products of the bf16 weight copy, bit for bit,
            # and the bf16 reference of the model with its weights rounded to bf16 (logits
            # within 1e-2: the boundary flips above, which here reach 4e-3 in two cases)
            path16 = path + "_bf16"
            copy.deepcopy(model).to(torch.bfloat16).save_pretrained(path16, safe_serialization=True)
            rounded = copy.deepcopy(model)
            with torch.no_grad():
                for p in rounded.parameters():
                    p.copy_(p.bfloat16().float())
            lr16, lossr16, _ = reference_bf16(rounded, tokens, targets)
            only = run_tool(path16, tokens, targets, tmp, matmul="bf16only")
            copy16 = run_tool(path16, tokens, targets, tmp, matmul="bf16w")
            check(sorted(only) == ["logits", "loss"] and all(np.array_equal(only[k], copy16[k]) for k in only),
                  "%s bf16 checkpoint, matrices in bf16 only: logits and loss bitwise those of the bf16 weight copy"
                  % case["name"])
            r = rel(only["logits"], lr16)
            check(r <= 1e-2 and abs(float(only["loss"][0]) - lossr16) <= 1e-4 * abs(lossr16),
                  "%s bf16 checkpoint, matrices in bf16 only: logits within %.1e of the bf16 reference, loss %.6f vs %.6f"
                  % (case["name"], r, float(only["loss"][0]), lossr16))

        # gradient accumulation: 2 micro-batches of B=1 vs one B=2 (all targets valid)
        case = CASES[0]
        model, path = make_model(case, tmp, seed=10)
        tokens, targets = make_tokens(case["vocab"], 2, 24, seed=7, ignore=False)
        one = run_tool(path, tokens, targets, tmp, micro=1)
        two = run_tool(path, tokens, targets, tmp, micro=2)
        worst = max(rel(two[k], one[k]) for k in one if k.startswith("grad."))
        check(worst <= ACCUM_TOL, "accumulated 2x(B=1) grads equal B=2 grads: rel err %.2e <= %.0e"
              % (worst, ACCUM_TOL))
        logits, loss, grads = reference(model, tokens, targets)
        compare("accum", two, logits, loss, grads, model)

        # loader errors name the tensor
        st = load_file(os.path.join(path, "model.safetensors"))
        bad = dict(st)
        bad["model.layers.1.mlp.up_proj.weight"] = np.zeros((95, 64), np.float32)
        save_file(bad, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        r = run_tool(path, tokens, targets, tmp, expect_ok=False)
        check(r.returncode != 0 and "model.layers.1.mlp.up_proj.weight" in r.stderr and "[95, 64]" in r.stderr
              and "[96, 64]" in r.stderr, "wrong shape rejected: %s" % r.stderr.strip())
        bad = dict(st)
        bad["model.norm.weight"] = st["model.norm.weight"].copy()
        bad["model.norm.weight"][5] = np.nan
        save_file(bad, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        r = run_tool(path, tokens, targets, tmp, expect_ok=False)
        check(r.returncode != 0 and "model.norm.weight" in r.stderr and "finite" in r.stderr,
              "NaN weight rejected: %s" % r.stderr.strip())
        bad = dict(st)
        del bad["lm_head.weight"]
        save_file(bad, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        r = run_tool(path, tokens, targets, tmp, expect_ok=False)
        check(r.returncode != 0 and "lm_head.weight" in r.stderr and "missing" in r.stderr,
              "missing tensor rejected: %s" % r.stderr.strip())

        # llama_save_safetensors streams from the backend: saving a 54M-parameter model
        # (about 200 MiB in fp32) raises the RSS by a few MiB, not by another copy
        big = dict(name="big", vocab=16384, hidden=1024, ff=2048, layers=2, heads=8, kv=4, head_dim=128,
                   theta=10000.0, tied=False)
        bmodel, bpath = make_model(big, tmp, seed=5)
        n_mib = sum(p.numel() for p in bmodel.parameters()) * 4 / 2**20
        del bmodel
        tokf = os.path.join(tmp, "big.i32")
        np.zeros(2 * 8, "<i4").tofile(tokf)
        r = subprocess.run([TOOL, bpath, tokf, "1", "8", os.path.join(tmp, "unused.st"), "--no-run", "--save",
                            os.path.join(tmp, "big_saved")], capture_output=True, text=True)
        m = re.search(r"save peak RSS (-?[0-9.]+) MiB over ([0-9.]+) MiB before", r.stdout)
        sanitizer = os.environ.get("PC_SANITIZER")  # tests/sanitize.sh: RSS also holds the shadow and quarantine
        check(r.returncode == 0 and m and (sanitizer or float(m.group(1)) < 0.1 * n_mib),
              "saving a %.0f MiB model raises the RSS by %s MiB%s (%s)" % (
                  n_mib, m and m.group(1), " (not checked under %s)" % sanitizer if sanitizer else "",
                  r.stderr.strip()))
        saved = load_file(os.path.join(tmp, "big_saved", "model.safetensors"))
        orig = load_file(os.path.join(bpath, "model.safetensors"))
        check(sorted(saved) == sorted(orig) and all(np.array_equal(saved[k], orig[k]) for k in orig),
              "big model saved bitwise as loaded")
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
