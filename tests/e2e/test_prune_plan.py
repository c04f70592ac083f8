"""run.mode prune is planned as what it holds: the whole small model on every rank (its
fp32 weights, gradient and AdamW moments), not the compress plan's base slices and
projections. On one rank:
- plan.txt of a prune run says so, and its total is below the compress plan's of the same
  job (dry run), which holds the base;
- a backend.memory_gib between the two lets the prune run through (the compress plan would
  refuse it), and the log states the plan's need against it;
- a backend.memory_gib under prune's plan stops the run before any weight is read, naming
  prune's plan, the key and the remedies, with no output written;
- the measured peak RSS of prune at full width less that at half width is what the plans'
  totals differ by (within 35%; not under a sanitizer): the base file's pages are read
  in both, so they cancel."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

GIB = 1024.0  # MiB


def dry_run_max(job, *sets):
    """The largest rank's total (MiB) of a one-rank dry run."""
    args = [pclib.PROJCOMPD, "--cfg", job, "--dry-run", "-np", "1"]
    for s in sets:
        args += ["--set", s]
    out = pclib.run(args).stdout
    m = re.search(r"^# memory GiB per rank: max ([0-9.]+)", out, re.M)
    pclib.check(m is not None, f"dry run of {job} {sets} prints the per-rank memory")
    return float(m.group(1)) * GIB, out


def main():
    root = pclib.tmpdir("pc-prune-plan-")
    job = pclib.memory_job(root, 4096, 256, 1024, 6, 128, 512, 32, 2)
    d = pclib.run_job(root, job, "prune", 1, "run.mode=prune")
    prune = pclib.plan_table(d)[0]["total"]
    text = open(os.path.join(d, "plan.txt")).read()
    pclib.check("# prune: every rank trains the whole small model" in text and "model.layers.0." not in text,
                "plan.txt of a prune run is prune's plan, with no compress blocks")
    dry, out = dry_run_max(job, "run.mode=prune")
    pclib.check(abs(dry - prune) < 0.01, f"the dry run's prune plan {dry:.1f} MiB is the run's {prune:.1f}")
    compress, out = dry_run_max(job)
    pclib.check("own no block" not in out, "compress on 1 rank: the rank owns blocks")
    # more ranks than the plan has blocks: the dry run says the projection stops shrinking
    many = pclib.run([pclib.PROJCOMPD, "--cfg", job, "--dry-run", "-np", "512", "--set", "train.micro_batch=1",
                      "--set", "train.global_batch=512"]).stdout
    m = re.search(r"^# blocks (\d+) .*\n# (\d+) of 512 ranks own no block \(there are (\d+)\)", many, re.M)
    pclib.check(m is not None and int(m.group(2)) == 512 - int(m.group(1)) and m.group(1) == m.group(3),
                f"512 ranks for {m.group(1) if m else '?'} blocks: the dry run names the ranks that own none")
    print(f"plans on one rank: prune {prune:.1f} MiB, compress {compress:.1f} MiB")
    pclib.check(compress - prune > 20, f"prune plans {prune:.1f} MiB, below compress's {compress:.1f}")

    gib = (prune + compress) / 2 / GIB
    fits = pclib.run_job(root, job, "prune-fits", 1, "run.mode=prune", f"backend.memory_gib={gib:.6f}")
    log = open(os.path.join(fits, "logs", "rank-00000.log")).read()
    m = re.search(r"the plan needs ([0-9.]+) of the ([0-9.]+) GiB this rank may use", log)
    pclib.check(m is not None and abs(float(m.group(1)) * GIB - prune) < 1 and abs(float(m.group(2)) - gib) < 1e-3,
                f"prune within {gib:.4f} GiB: the log states prune's need: {m.group(0) if m else None}")
    pclib.check(os.path.isdir(os.path.join(fits, "final")), f"prune within {gib:.4f} GiB runs to its output")
    p = pclib.projcompd(1, job, f"run.dir={os.path.join(root, 'compress-refused')}", f"backend.memory_gib={gib:.6f}",
                        check=False)
    pclib.check(p.returncode != 0 and "backend.memory_gib" in p.stdout + p.stderr,
                f"compress within {gib:.4f} GiB is refused (exit {p.returncode})")

    small = os.path.join(root, "prune-too-small")
    gib = prune * 0.9 / GIB
    p = pclib.projcompd(1, job, f"run.dir={small}", "run.mode=prune", f"backend.memory_gib={gib:.6f}", check=False)
    err = p.stdout + p.stderr
    pclib.check(p.returncode != 0 and "prune's plan needs" in err and "backend.memory_gib" in err and "try " in err
                and "more ranks" not in err, f"prune in {gib:.4f} GiB: exit {p.returncode}, message: {err[-600:]}")
    pclib.check(not os.path.exists(os.path.join(small, "final")), "prune refused: no output written")

    big = pclib.memory_root(root)
    if big is None:
        return
    (_, half), (_, full) = pclib.rss_vs_plan(big, job, "total", [
        ("prune-half-width", ["run.mode=prune"]),
        ("prune-full-width", ["run.mode=prune", "compress.d_model=256", "compress.d_ff=1024"])])
    pclib.check(full - half > 50, f"the plans differ by {full - half:.1f} MiB")


if __name__ == "__main__":
    main()
