"""Sharding plan against an independent reference. Runs plan-tool on the shape configs
under configs/models (Llama-3.1-8B, Llama-3.2-1B, SmolLM-135M, a 70B GQA shape) and the
demo model, on 1 to 512 ranks, with GPU (bf16) and CPU (f32) sizes, parses plan.txt, and
re-derives from config.json alone: the tensor list, each block's base / compressed
slice, its bytes (frozen base + 12 bytes per own trainable element + a replicated shared
factor) and projection FLOPs (counted from the matmuls a slice needs), that the ranges
tile each matrix and q/k/v/o ranges are whole heads, the rank table (blocks, base bytes,
GFLOP, W_C replica, totals), the comm line, and the wall time. A prune plan (--prune)
holds the whole small model on every rank and nothing of the compress plan's blocks: no
block lines, state the AdamW moments (8 bytes a parameter), replica the fp32 weights and
G (8), the compress plan's activations, and the gradient's all-reduce as its comm.
plan.txt of the demo on 3 ranks with forced splits must equal the stored golden file."""
import json
import os
import re
import subprocess
import sys
import time

SRC = os.environ.get("PC_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PC_BUILD", os.path.join(SRC, "build"))
TOOL = os.environ.get("PLAN_TOOL", os.path.join(BUILD, "tests", "plan", "plan-tool"))
HERE = os.path.dirname(os.path.abspath(__file__))
GIB, MIB = float(1 << 30), float(1 << 20)

CASES = [
    ("configs/models/llama-3.1-8b/config.json", 2160, 6480),
    ("configs/models/llama-3.2-1b/config.json", 1344, 5376),
    ("configs/models/smollm-135m/config.json", 384, 1024),
    ("configs/models/llama-3.1-70b/config.json", 4320, 12960),
    ("configs/demo-model.json", 64, 192),
]
WORLDS = [1, 2, 5, 8, 16, 64, 512]
failures = []
stats = {"split": 0, "shared": 0}


def check(cond, msg):
    if not cond:
        failures.append(msg)


def close(a, b, tol):
    return abs(a - b) <= tol


def tensors(cfg, dc, fc):
    """(name, kind, d_out, d_in, d_out', d_in', split axis, granule) in HF order."""
    d, f, V, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg.get("head_dim")
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = hd or d // H
    out = [("model.embed_tokens.weight", "mat", V, d, V, dc, "rows", 1)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", "norm", d, 1, dc, 1, None, 1),
                (p + "self_attn.q_proj.weight", "mat", H * hd, d, H * hd, dc, "rows", hd),
                (p + "self_attn.k_proj.weight", "mat", KV * hd, d, KV * hd, dc, "rows", hd),
                (p + "self_attn.v_proj.weight", "mat", KV * hd, d, KV * hd, dc, "rows", hd),
                (p + "self_attn.o_proj.weight", "mat", d, H * hd, dc, H * hd, "cols", hd),
                (p + "post_attention_layernorm.weight", "norm", d, 1, dc, 1, None, 1),
                (p + "mlp.gate_proj.weight", "mat", f, d, fc, dc, None, 1),
                (p + "mlp.up_proj.weight", "mat", f, d, fc, dc, None, 1),
                (p + "mlp.down_proj.weight", "mat", d, f, dc, fc, None, 1)]
    out += [("model.norm.weight", "norm", d, 1, dc, 1, None, 1),
            ("lm_head.weight", "mat", V, d, V, dc, "rows", 1)]
    return out, H, KV, hd


def block_ref(t, kind, r0, r1, base_b, full=False):
    """bytes, GFLOP and shared-factor numel of one block, from first principles; with full
    also its own trainable elements and the gradients' GFLOP (what the update recomputes)."""
    name, tk, dO, dI, oc, ic, axis, _ = t
    if tk == "norm":
        return (12 * oc, 0.0, 0, oc, 0.0) if full else (12 * oc, 0.0, 0)
    pin, pout = ic < dI, oc < dO
    if kind == "rows":
        dO = oc = r1 - r0
    elif kind == "cols":
        dI = ic = r1 - r0
    split = kind in ("rows", "cols")
    shared = (dI * ic if kind == "rows" and pin else 0) + (oc * dO if kind == "cols" and pout else 0)
    own = oc * ic + (dI * ic if pin and not (kind == "rows") else 0) + (oc * dO if pout and not (kind == "cols") else 0)
    if not split:
        own = oc * ic + (dI * ic if pin else 0) + (oc * dO if pout else 0)
    nbytes = dO * dI * base_b + 12 * own + 12 * shared
    # multiply-adds of the matmuls one step runs on this slice
    macs = grad = 0
    if pin and pout:
        macs += min(dO * dI * ic + oc * dO * ic, oc * dO * dI + oc * dI * ic)  # W_C, cheaper order
        grad += dO * dI * ic + oc * dO * dI      # W P_in and P_out W for the gradients
        grad += oc * ic * dO + dI * oc * ic      # dP_out = G (W P_in)^T, dP_in = (P_out W)^T G
    elif pin:
        macs += dO * dI * ic                     # W P_in
        grad += dO * dI * ic                     # dP_in = W^T G
    elif pout:
        macs += oc * dO * dI                     # P_out W
        grad += oc * dO * dI                     # dP_out = G W^T
    gflop = 2.0 * (macs + grad) / 1e9
    return (nbytes, gflop, shared, own, 2.0 * grad / 1e9) if full else (nbytes, gflop, shared)


def parse(text):
    lines = text.splitlines()
    hdr = {}
    for ln in lines:
        m = re.match(r"# (base|small)\s+d_model (\d+)\s+d_ff (\d+)(?: \(max, per layer\))?\s+layers (\d+)\s+heads "
                     r"(\d+)/(\d+)\s+head_dim (\d+)\s+vocab (\d+)\s+tied (yes|no)\s+params (\d+)$", ln)
        if m:
            hdr[m.group(1)] = [int(x) if x.isdigit() else x for x in m.groups()[1:]]
    blocks = [ln.split() for ln in lines if ln.startswith("  model.") or ln.startswith("  lm_head")]
    ranks = [ln.split() for ln in lines if re.match(r"  \d+ ", ln)]
    world = int(re.search(r"# world (\d+)", text).group(1))
    comm = re.search(r"all-gather W_C ([\d.]+) GiB \+ reduce G ([\d.]+) GiB", text)
    shared = [ln.split() for ln in lines if ln.startswith("  shared ")]
    return hdr, blocks, ranks, world, comm, shared


def run_case(path, dc, fc, world, cpu, extra=()):
    cfg = json.load(open(os.path.join(SRC, path)))
    args = [TOOL, os.path.join(SRC, path), str(dc), str(fc), str(world), "2", "1024"] + (["--cpu"] if cpu else []) + list(extra)
    t0 = time.time()
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.time() - t0
    tag = f"{os.path.basename(os.path.dirname(path)) or path} w={world} cpu={cpu}"
    if p.returncode != 0:
        failures.append(f"{tag}: plan-tool failed: {p.stderr}")
        return None
    check(dt < 1.0, f"{tag}: took {dt:.2f} s")
    hdr, blocks, ranks, w, comm, shared = parse(p.stdout)
    ts, H, KV, hd = tensors(cfg, dc, fc)
    base_b, comp_b = (4, 4) if cpu else (2, 2)
    check(w == world, f"{tag}: world {w}")
    check(hdr["base"][:7] == [cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], H, KV, hd,
                              cfg["vocab_size"]], f"{tag}: base header {hdr.get('base')}")
    check(hdr["small"][:2] == [dc, fc], f"{tag}: small header {hdr.get('small')}")
    # blocks: consecutive per tensor, tiling the split axis, whole heads
    by_owner_bytes, by_owner_n, by_owner_gf = [0.0] * world, [0] * world, [0.0] * world
    strided = 0  # W_C elements of the column blocks, packed for the exchange
    total_base = 0
    i = 0
    n_split = 0
    for t in ts:
        name, tk, dO, dI, oc, ic, axis, gran = t
        extent = oc if tk == "norm" else (dI if axis == "cols" else dO)
        nxt, n = 0, 0
        while i < len(blocks) and blocks[i][0] == name:
            _, kind, rng, owner, mib, gf, _ = blocks[i]
            r0, r1 = map(int, rng.split(":"))
            owner, mib, gf = int(owner), float(mib), float(gf)
            check(r0 == nxt and r1 > r0, f"{tag}: {name} range {rng} after {nxt}")
            check(0 <= owner < world, f"{tag}: {name} owner {owner}")
            if kind in ("rows", "cols"):
                check(kind == axis, f"{tag}: {name} split as {kind}")
                check(r0 % gran == 0 and (r1 % gran == 0 or r1 == extent), f"{tag}: {name} {rng} not in units of {gran}")
            else:
                check(kind == ("norm" if tk == "norm" else "whole"), f"{tag}: {name} kind {kind}")
            nbytes, gflop, _ = block_ref(t, kind, r0, r1, base_b)
            check(close(mib, nbytes / MIB, 0.006), f"{tag}: {name} {rng}: {mib} MiB, reference {nbytes / MIB:.3f}")
            check(close(gf, gflop, 0.0006 + 1e-6 * gflop), f"{tag}: {name} {rng}: {gf} GFLOP, reference {gflop:.4f}")
            by_owner_n[owner] += 1
            by_owner_gf[owner] += gf
            strided += oc * (r1 - r0) if kind == "cols" else 0
            if tk == "mat":
                slice_el = {"rows": (r1 - r0) * dI, "cols": dO * (r1 - r0)}.get(kind, dO * dI)
                by_owner_bytes[owner] += slice_el * base_b
                total_base += slice_el * base_b
            nxt, n, i = r1, n + 1, i + 1
        check(n >= 1 and nxt == extent, f"{tag}: {name} covered up to {nxt} of {extent} in {n} block(s)")
        n_split += n > 1
    check(i == len(blocks), f"{tag}: {len(blocks) - i} unexpected block line(s) from '{blocks[i][0] if i < len(blocks) else ''}'")
    check(total_base == sum(t[2] * t[3] * base_b for t in ts if t[1] == "mat"), f"{tag}: base bytes do not add up")
    if world == 1:
        check(n_split == 0 and not shared, f"{tag}: one rank but {n_split} split matrices")
    # rank table
    check(len(ranks) == world, f"{tag}: {len(ranks)} rank rows")
    V, L = cfg["vocab_size"], cfg["num_hidden_layers"]
    small_params = 2 * V * dc + L * (dc * H * hd * 2 + 2 * dc * KV * hd + 3 * dc * fc + 2 * dc) + dc
    for r, row in enumerate(ranks):
        rid, nb, base, state, sh, replica, xchg, scratch, act, grads, total, gf = row
        check(int(rid) == r and int(nb) == by_owner_n[r], f"{tag}: rank {r} has {nb} blocks, lines say {by_owner_n[r]}")
        check(close(float(base), by_owner_bytes[r] / GIB, 0.0006), f"{tag}: rank {r} base {base} GiB")
        check(close(float(gf), by_owner_gf[r], 0.0006 * (by_owner_n[r] + 1) + 1e-6 * by_owner_gf[r]),
              f"{tag}: rank {r} {gf} GFLOP, blocks sum to {by_owner_gf[r]:.3f}")
        check(close(float(replica), small_params * (comp_b + 4) / GIB, 0.0006), f"{tag}: rank {r} replica {replica}")
        xchg_ref = 4 * strided if world > 1 else 0
        check(close(float(xchg), xchg_ref / GIB, 0.0006), f"{tag}: rank {r} xchg {xchg} GiB, reference {xchg_ref / GIB:.3f}")
        parts = sum(float(x) for x in (base, state, sh, replica, xchg, scratch, act, grads))
        check(close(float(total), parts, 0.004), f"{tag}: rank {r} total {total} != parts {parts:.3f}")
    # shared factors: one per split matrix with a projected side, held once per owner rank
    owners = {}
    for b in blocks:
        owners.setdefault(b[0], []).append(int(b[3]))
    for sf in shared:
        _, name, mib, _, _, nb, _, nr = sf
        tensor, fac = name.rsplit(".", 1)
        t = next(x for x in ts if x[0] == tensor)
        numel = t[3] * t[5] if fac == "p_in" else t[4] * t[2]
        check(close(float(mib), 12 * numel / MIB, 0.006), f"{tag}: shared {name} {mib} MiB")
        check(int(nb) == len(owners[tensor]) > 1 and int(nr) == len(set(owners[tensor])),
              f"{tag}: shared {name} blocks {nb} ranks {nr}, lines say {owners[tensor]}")
    stats["split"] += n_split
    stats["shared"] += len(shared)
    check(close(float(comm.group(1)), small_params * comp_b / GIB, 0.0006), f"{tag}: all-gather {comm.group(1)}")
    check(close(float(comm.group(2)), small_params * comp_b / GIB, 0.0006), f"{tag}: reduce {comm.group(2)}")
    return p.stdout


def run_keep(path, dc, fc, world, cpu, split=()):
    """compress.store_grads: false keeps no block's gradients, true every block's, auto (by
    an independent replay of its greedy) the ones with the most gradient FLOPs per byte
    that fit in the capacity less a sixteenth, beside the rest of the plan, which must not
    change. Every plan also goes through run_case's reference."""
    cfg = json.load(open(os.path.join(SRC, path)))
    ts = {t[0]: t for t in tensors(cfg, dc, fc)[0]}
    base_b = 4 if cpu else 2
    tag = f"store_grads {os.path.basename(os.path.dirname(path)) or path} w={world}"

    def plan(store, capacity=0):
        out = run_case(path, dc, fc, world, cpu, list(split) + ["--store-grads", store] +
                       (["--capacity", str(capacity)] if capacity else []))
        if out is None:
            return None
        _, blocks, ranks, _, _, _ = parse(out)
        return out, blocks, ranks

    def own_grad(b):  # own trainable elements, gradient GFLOP
        r0, r1 = map(int, b[2].split(":"))
        return block_ref(ts[b[0]], b[1], r0, r1, base_b, full=True)[3:]

    none = plan("false")
    if none is None:
        return
    _, blocks, ranks0 = none
    info = [own_grad(b) for b in blocks]
    totals = [float(r[10]) * GIB for r in ranks0]
    check(all(b[6] == "no" for b in blocks) and all(float(r[9]) == 0 for r in ranks0), f"{tag}: false keeps some")

    def same_rest(res, what):
        _, bl, rk = res
        check([b[:6] for b in bl] == [b[:6] for b in blocks], f"{what}: blocks differ beyond the kept column")
        check([r[:9] + r[11:] for r in rk] == [r[:9] + r[11:] for r in ranks0],
              f"{what}: rank table differs beyond grads and total")

    def check_grads(res, what):  # grads column = the kept blocks' own elements x 4; total = rest + grads
        _, bl, rk = res
        for r in range(world):
            kept = sum(4 * info[i][0] for i, b in enumerate(bl) if int(b[3]) == r and b[6] == "yes")
            check(close(float(rk[r][9]), kept / GIB, 0.0006), f"{what}: rank {r} grads {rk[r][9]} GiB, kept "
                  f"blocks hold {kept / GIB:.4f}")
            check(close(float(rk[r][10]), (totals[r] + kept) / GIB, 0.0011), f"{what}: rank {r} total {rk[r][10]}")

    res = plan("true")
    if res:
        same_rest(res, f"{tag} true")
        check(all(b[6] == "yes" for b in res[1]), f"{tag} true: a block not kept")
        check_grads(res, f"{tag} true")
    res = plan("auto")
    if res:
        check("no memory size known" in res[0] and all(b[6] == "no" for b in res[1]),
              f"{tag} auto without a capacity keeps some")
    res = plan("auto", 1 << 50)
    if res:
        same_rest(res, f"{tag} auto, huge")
        check(all((b[6] == "yes") == (info[i][1] > 0) for i, b in enumerate(res[1])),
              f"{tag} auto with room for all: kept must be exactly the blocks with gradient FLOPs")
        check_grads(res, f"{tag} auto, huge")
    # about half of rank 0's gradients fit
    g0 = sum(4 * info[i][0] for i, b in enumerate(blocks) if int(b[3]) == 0 and info[i][1] > 0)
    cap = int((totals[0] + g0 / 2) * 16 / 15) + 1
    res = plan("auto", cap)
    if not res:
        return
    same_rest(res, f"{tag} auto, half")
    check_grads(res, f"{tag} auto, half")
    bl = res[1]
    tol = 0.0006 * GIB  # the false plan's totals are printed to 1/1000 GiB
    for r in range(world):
        mine = sorted((i for i, b in enumerate(bl) if int(b[3]) == r), key=lambda i: (-info[i][1] / info[i][0], i))
        room = cap - cap // 16 - totals[r]
        for i in mine:
            need, kept = 4 * info[i][0], bl[i][6] == "yes"
            if info[i][1] == 0:
                check(not kept, f"{tag}: {bl[i][0]} has no gradient FLOPs but is kept")
            elif need <= room - tol or need > room + tol:
                check(kept == (need <= room), f"{tag}: rank {r} {bl[i][0]} {bl[i][2]} kept={kept}, need "
                      f"{need / MIB:.2f} MiB of {room / MIB:.2f}")
            room -= need if kept else 0
    k0 = sum(4 * info[i][0] for i, b in enumerate(bl) if int(b[3]) == 0 and b[6] == "yes")
    check(0 < k0 < g0, f"{tag}: auto at half: rank 0 keeps {k0} of {g0} bytes")

def run_prune(path, dc, fc, world, cpu):
    """--prune against the parameter count of the small model and the compress plan of the
    same arguments (its activations)."""
    cfg = json.load(open(os.path.join(SRC, path)))
    tag = f"prune {os.path.basename(os.path.dirname(path)) or path} w={world} cpu={cpu}"
    args = [TOOL, os.path.join(SRC, path), str(dc), str(fc), str(world), "2", "1024"] + (["--cpu"] if cpu else [])
    comp = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=True).stdout
    p = subprocess.run(args + ["--prune"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        failures.append(f"{tag}: plan-tool failed: {p.stderr}")
        return
    hdr, blocks, ranks, w, comm, shared = parse(p.stdout)
    _, _, cranks, _, _, _ = parse(comp)
    ts, H, KV, hd = tensors(cfg, dc, fc)
    n = sum(t[4] * t[5] for t in ts)  # the small model's parameters, untied
    check(hdr["small"][-1] == n and f"{n} parameters" in p.stdout, f"{tag}: params {hdr['small'][-1]} vs {n}")
    check(not blocks and not shared and comm is None, f"{tag}: {len(blocks)} block and {len(shared)} shared lines")
    check(len(ranks) == world, f"{tag}: {len(ranks)} rank rows")
    for r, row in enumerate(ranks):
        _, nb, base, state, sh, replica, xchg, scratch, act, grads, total, gf = row
        check(int(nb) == 0 and float(base) == 0 and float(sh) == 0 and float(xchg) == 0 and float(grads) == 0
              and float(gf) == 0, f"{tag}: rank {r} holds compress items: {row}")
        check(close(float(state), 8 * n / GIB, 0.0006), f"{tag}: rank {r} state {state}, AdamW m, v {8 * n / GIB:.3f}")
        check(close(float(replica), 8 * n / GIB, 0.0006), f"{tag}: rank {r} replica {replica}, weights + G")
        check(act == cranks[r][8], f"{tag}: rank {r} act {act}, the compress plan's {cranks[r][8]}")
        parts = float(state) + float(replica) + float(scratch) + float(act)
        check(close(float(total), parts, 0.002), f"{tag}: rank {r} total {total} != parts {parts:.3f}")
    m = re.search(r"# comm per step: all-reduce G ([\d.]+) GiB ; per-rank ring send ~ ([\d.]+) GiB", p.stdout)
    ring = 2 * (world - 1) / world * 4 * n
    check(m is not None and close(float(m.group(1)), 4 * n / GIB, 0.0006) and close(float(m.group(2)), ring / GIB,
          0.0006), f"{tag}: comm line {m.group(0) if m else None}, G {4 * n / GIB:.3f}, ring {ring / GIB:.3f}")


def main():
    if not os.path.exists(TOOL):
        print(f"SKIP: {TOOL} not built")
        return 77
    for path, dc, fc in CASES:
        for world in WORLDS:
            for cpu in (False, True):
                run_case(path, dc, fc, world, cpu)
    # the split path was exercised (large vocabularies on many ranks)
    check(stats["split"] > 0 and stats["shared"] > 0, f"no plan split a matrix: {stats}")
    # forced splits (threshold 64 KiB) go through the same reference
    run_case("configs/demo-model.json", 64, 192, 3, True, ["--split", "65536"])
    run_case("configs/models/smollm-135m/config.json", 384, 1024, 16, False, ["--split", "1000000"])
    # compress.store_grads
    run_keep("configs/demo-model.json", 64, 192, 1, True)
    run_keep("configs/demo-model.json", 64, 192, 3, True, ["--split", "65536"])
    run_keep("configs/models/llama-3.2-1b/config.json", 1344, 5376, 8, False)
    run_keep("configs/models/smollm-135m/config.json", 384, 1024, 16, False, ["--split", "1000000"])
    # run.mode prune
    for path, dc, fc in CASES:
        for world in (1, 8):
            for cpu in (False, True):
                run_prune(path, dc, fc, world, cpu)
    # format stability: the demo plan on 3 ranks with forced splits, byte for byte
    golden = os.path.join(HERE, "golden", "demo-w3-cpu-split.txt")
    args = [TOOL, os.path.join(SRC, "configs/demo-model.json"), "64", "192", "3", "4", "128", "--cpu",
            "--split", "65536"]
    out = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=True).stdout
    if os.environ.get("PLAN_UPDATE_GOLDEN"):
        os.makedirs(os.path.dirname(golden), exist_ok=True)
        open(golden, "w").write(out)
    want = open(golden).read()
    if out != want:
        import difflib
        failures.append("plan.txt format changed:\n" + "".join(difflib.unified_diff(
            want.splitlines(True), out.splitlines(True), "golden", "plan-tool")))
    # bad usage and bad shapes are refused with a message
    bad = subprocess.run([TOOL, os.path.join(SRC, CASES[0][0]), "5000", "6480", "8"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    check(bad.returncode == 1 and "hidden_size" in bad.stderr, f"d_model 5000 > 4096 accepted: {bad.stderr}")
    bad = subprocess.run([TOOL, "x.json", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    check(bad.returncode == 2 and "usage" in bad.stderr, "bad usage accepted")
    for f in failures[:40]:
        print("FAIL:", f)
    print(f"{len(failures)} failure(s) over {len(CASES) * len(WORLDS) * 2 + 2} plans; {stats}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
