"""kit.sh's --budget: the parts share a deadline. On a build tree (kit.sh build), part
check (kit_check.py, run by $PYTHON):
- with 1 s left, below the 20 s a step needs, the check is not started: a BUDGET line,
  no kit_check output, exit 1, back at once;
- with PCKIT_STEP_MIN=1 and a budget of 5 s, under a $PYTHON that takes a minute, it
  starts and is stopped at the deadline: a CUT line (not FAIL: the programs did not
  fail), exit 1, within seconds; the same part asked for again after it is not started
  (BUDGET), though the deadline fell less than a second after the cut;
- a budget that is not a number of seconds is refused (exit 2)."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def kit(out, *args, step_min=None, python=sys.executable):
    env = dict(pclib.env(), OUT=out, PYTHON=python)
    if step_min is not None:
        env["PCKIT_STEP_MIN"] = str(step_min)
    t0 = time.time()
    p = subprocess.run(["bash", os.path.join(pclib.SRC, "tests", "gpu", "kit.sh"), "build", pclib.BUILD] + list(args),
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    log = open(os.path.join(out, "kit-check.txt")).read() if os.path.exists(os.path.join(out, "kit-check.txt")) else ""
    return p.returncode, p.stdout, log, time.time() - t0


def main():
    root = pclib.tmpdir("pc-kit-budget-")

    rc, text, log, took = kit(os.path.join(root, "a"), "--budget", "1", "check")
    pclib.check(rc == 1, f"budget 1 s: exit {rc} (want 1)\n{text}")
    pclib.check(log.startswith("BUDGET (") and "not started" in log and "kit_check.py" in log,
                f"budget 1 s: the check is marked BUDGET, not run: {log!r}")
    pclib.check("kit:" not in log and "FAIL" not in log, f"budget 1 s: nothing ran, nothing failed: {log!r}")
    pclib.check(took < 10, f"budget 1 s: back at once ({took:.1f} s)")

    slow = os.path.join(root, "slow-python")  # a check that outlasts any budget here
    with open(slow, "w") as f:
        f.write("#!/bin/sh\nexec sleep 60\n")
    os.chmod(slow, 0o755)
    rc, text, log, took = kit(os.path.join(root, "b"), "--budget", "5", "check", "check", step_min=1, python=slow)
    pclib.check(rc == 1, f"budget 5 s: exit {rc} (want 1)\n{text}")
    pclib.check("CUT (the budget's deadline, after " in log and "FAIL" not in log,
                f"budget 5 s: the check is cut at the deadline, not failed: {log[-2000:]!r}")
    pclib.check("the programs do not run here" not in text, f"budget 5 s: a cut check is no failed check:\n{text}")
    pclib.check(took < 30, f"budget 5 s: stopped at the deadline ({took:.1f} s)")
    pclib.check(log.rstrip().splitlines()[-1].startswith("BUDGET ("),
                f"budget 5 s: the second check is not started: {log[-500:]!r}")

    rc, text, _, _ = kit(os.path.join(root, "c"), "--budget", "soon", "check")
    pclib.check(rc == 2 and "--budget takes a number of seconds" in text, f"--budget soon: exit {rc}\n{text}")
    print("kit budget: BUDGET, CUT and a bad budget as documented")


if __name__ == "__main__":
    main()
