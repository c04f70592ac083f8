"""projcomp-plot draws the curves of runs whose metrics.jsonl the daemon writes in every
shape a run leaves: a resumed run (the steps after its checkpoint logged twice: the last
row of a step counts, in step order), a diverged run with train.on_nonfinite: skip (null
losses and gradient norms: gaps), a one-step run, and an eval run (no training rows: its
panels stay empty). Each plot exits 0 with a PNG; so does one of all four together.

A run directory whose name holds '=' (lr=1e-3, as sweeps name them) is a run as a whole,
and RUN=LABEL splits at the last '='; a row lacking a key is skipped with a warning
naming its line. Then what it must refuse, with exit 1, a message naming the problem
(the file, and the line where one is to blame), no Python traceback, no PNG and no
temporary directory left behind: -o into a directory that does not exist, -o that
gnuplot cannot open (a directory: gnuplot then writes the PNG to its stdout, which is
not text), an empty metrics.jsonl, one whose rows all lack keys, a line that is not a
JSON object and one that is not JSON."""
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

PLOT = os.path.join(pclib.BUILD, "daemon", "projcomp-plot")


def step(n, loss, gnorm=1.5, lr=1e-3):
    return {"step": n, "loss": loss, "lr": lr, "grad_norm": gnorm, "tokens_per_s": 1000.0 + n,
            "step_time": 0.25, "tokens": 256 * n, "tflops": 0.01, "comm_mb": 0.0}


def val(n, loss):
    return {"step": n, "val_loss": loss, "val_ppl": 2.0, "params": 1000}


def write_run(root, name, rows):
    d = os.path.join(root, name)
    os.makedirs(d)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return d


def main():
    root = pclib.tmpdir("pc-plot-")
    runs = {
        # steps 1-3, stopped after the checkpoint of step 2 during step 3, resumed: 3-5 again
        "resumed": [val(0, 5.0), step(1, 4.0), step(2, 3.5), val(2, 3.6), step(3, 9.9, lr=9e-3), step(3, 3.2),
                    step(4, 3.0), val(4, 3.1), step(5, 2.9), {"peak_rss_mib": [100.0], "peak_device_mib": [0.0]}],
        "diverged": [step(1, 4.0), step(2, None, None), step(3, None, 2.0), step(4, 3.8, None)],
        "one": [val(0, 5.0), step(1, 4.0), val(1, 3.9)],
        "eval": [val(0, 3.3), {"peak_rss_mib": [90.0], "peak_device_mib": [0.0]}],
    }
    dirs = {name: write_run(root, name, rows) for name, rows in runs.items()}

    spec = importlib.util.spec_from_loader("projcomp_plot", importlib.machinery.SourceFileLoader("projcomp_plot", PLOT))
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    train, valid = plot.load(dirs["resumed"])
    pclib.check([r["step"] for r in train] == [1, 2, 3, 4, 5] and train[2]["loss"] == 3.2 and
                [r["step"] for r in valid] == [0, 2, 4],
                f"resumed: one row a step in step order, the last of step 3 ({[(r['step'], r['loss']) for r in train]})")

    for name, d in list(dirs.items()) + [("all", None)]:
        out = os.path.join(root, f"{name}.png")
        args = [PLOT, "-o", out, "--title", f'"{name}"'] + ([d] if d else [f"{v}={k}" for k, v in dirs.items()])
        p = subprocess.run(args, capture_output=True, text=True, timeout=120)
        ok = p.returncode == 0 and os.path.exists(out) and open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        pclib.check(ok, f"{name}: plotted to a PNG (exit {p.returncode}) {p.stderr.strip()[-500:]}")
    equals_in_names(root, plot)
    rows_lacking_keys(root)
    refused(root)


def is_png(path):
    return os.path.exists(path) and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def run_plot(args):
    """projcomp-plot with its own TMPDIR (returned, to look for what it left there)."""
    tmp = pclib.tmpdir("pc-plot-tmp-")
    p = subprocess.run([PLOT] + args, capture_output=True, text=True, timeout=120, env=dict(os.environ, TMPDIR=tmp))
    return p, tmp


def equals_in_names(root, plot):
    """A sweep's run directory lr=1e-3 is a run, not RUN=LABEL; a label splits at the last '='."""
    sweep = write_run(root, "lr=1e-3", [step(1, 4.0), step(2, 3.5)])
    pclib.check(plot.run_and_label(sweep) == (sweep, "lr=1e-3") and
                plot.run_and_label(sweep + "=fast") == (sweep, "fast") and
                plot.run_and_label(os.path.join(root, "one=a=b")) == (os.path.join(root, "one=a"), "b"),
                "an existing directory is a run as a whole; RUN=LABEL splits at the last '='")
    for name, arg in (("sweep", sweep), ("sweep-label", sweep + "=fast")):
        out = os.path.join(root, f"{name}.png")
        p, _ = run_plot(["-o", out, arg])
        pclib.check(p.returncode == 0 and is_png(out), f"{arg}: plotted (exit {p.returncode}) {p.stderr.strip()}")


def rows_lacking_keys(root):
    """Rows without a key their panel needs are skipped, and the first named by its line."""
    partly = write_run(root, "partly", [step(1, 4.0), {"step": 2, "loss": 3.5}, step(3, 3.0), {"val_loss": 3.1}])
    out = os.path.join(root, "partly.png")
    p, _ = run_plot(["-o", out, partly])
    pclib.check(p.returncode == 0 and is_png(out) and
                f"{partly}/metrics.jsonl:2: a row without tokens, lr, grad_norm, tokens_per_s: skipped (and 1 more)"
                in p.stderr, f"rows lacking keys: skipped with a warning naming the first's line ({p.stderr.strip()})")


def refused(root):
    """Each exits 1 naming the problem, with no traceback, no PNG and no temporary directory."""
    one, nodir, out = os.path.join(root, "one"), os.path.join(root, "nodir"), os.path.join(root, "x.png")
    empty = write_run(root, "empty", [])
    nokeys = write_run(root, "nokeys", [{"step": 1, "loss": 2.0}])
    notobj = write_run(root, "notobj", [step(1, 4.0), [1, 2]])
    notjson = write_run(root, "notjson", [step(1, 4.0)])
    with open(os.path.join(notjson, "metrics.jsonl"), "a") as f:
        f.write('{"step": 2, "loss"\n')
    cases = [
        ("-o in a missing directory", ["-o", os.path.join(nodir, "x.png"), one],
         f"-o {nodir}/x.png: directory {nodir} does not exist"),
        ("-o a directory", ["-o", root, one], "gnuplot failed"),
        ("an empty metrics.jsonl", ["-o", out, empty], f"{empty}/metrics.jsonl: nothing to plot"),
        ("rows all lacking keys", ["-o", out, nokeys], f"{nokeys}/metrics.jsonl: nothing to plot"),
        ("a row that is not an object", ["-o", out, notobj], f"{notobj}/metrics.jsonl:2: not a JSON object"),
        ("a line that is not JSON", ["-o", out, notjson], f"{notjson}/metrics.jsonl:2: not a JSON line"),
    ]
    for what, args, msg in cases:
        p, tmp = run_plot(args)
        pclib.check(p.returncode == 1 and msg in p.stderr and "Traceback" not in p.stderr,
                    f"{what}: refused naming it (exit {p.returncode}) {p.stderr.strip()[-500:]}")
        pclib.check(not os.path.exists(out) and not os.path.exists(nodir) and not os.listdir(tmp),
                    f"{what}: no PNG, no temporary directory left ({os.listdir(tmp)})")


if __name__ == "__main__":
    main()
