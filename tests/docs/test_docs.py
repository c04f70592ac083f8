"""Docs check: every real-model job file in configs/ loads and plans, and every relative
link in docs/*.md and README.md points at an existing file.

Job files: configs/*.yaml other than configs/demo-*.yaml (the demo has its own tests).
A job file configs/NAME.yaml is dry-run with `projcompd --cfg configs/NAME.yaml --dry-run
-np N --set model.base=configs/models/NAME` (shape-only config.json, no weights), N from
its header line "Expects N ranks" (1 when absent); it must exit 0 and print a plan. When
the header quotes the per-rank memory of that dry run ("...: X GiB max"), the plan's
"max" must equal X at the precision written. A job file without configs/models/NAME is
checked by config-check alone (it must parse and have every key its mode requires).

Links: [text](target) and [text]: target in docs/*.md and README.md, except URLs and
the target (without its #fragment) is resolved against the file's directory and must
exist; a #fragment into a Markdown file (or a pure #anchor) must name one of its headings
(GitHub's slugs: lower case, punctuation dropped, spaces to hyphens)."""
import glob
import os
import re
import subprocess
import sys

BUILD = os.environ.get("PC_BUILD", "build")
SRC = os.environ.get("PC_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
PROJCOMPD = os.path.join(BUILD, "daemon", "projcompd")
CONFIG_CHECK = os.path.join(BUILD, "tests", "config", "config-check")

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL " + msg)


def run(args):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl="self,vader", OMPI_MCA_rmaps_base_oversubscribe="1")
    return subprocess.run(args, cwd=SRC, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=120)


def check_job(path):
    rel = os.path.relpath(path, SRC)
    name = os.path.splitext(os.path.basename(path))[0]
    header = "".join(l[1:] for l in open(path) if l.startswith("#"))
    header = re.sub(r"\s+", " ", header)
    m = re.search(r"Expects (\d+) ranks", header)
    np_ = int(m.group(1)) if m else 1
    model = os.path.join("configs", "models", name)
    if not os.path.isfile(os.path.join(SRC, model, "config.json")):
        p = run([CONFIG_CHECK, rel, "--ranks", str(np_)])
        if p.returncode != 0:
            fail(f"{rel}: config-check exit {p.returncode}: {p.stderr.strip()}")
        else:
            print(f"ok   {rel}: parses (no {model}/config.json for a dry run)")
        return
    args = [PROJCOMPD, "--cfg", rel, "--dry-run", "-np", str(np_), "--set", f"model.base={model}"]
    p = run(args)
    if p.returncode != 0:
        fail(f"{rel}: `{' '.join(args)}` exit {p.returncode}: {p.stderr.strip()}")
        return
    got = re.search(r"^# memory GiB per rank: max ([0-9.]+)", p.stdout, re.M)
    if not got:
        fail(f"{rel}: dry run printed no per-rank memory line")
        return
    quoted = re.search(r"--dry-run -np %d`[^:]*: ([0-9.]+) GiB max" % np_, header)
    if quoted:
        want = quoted.group(1)
        decimals = len(want.split(".")[1]) if "." in want else 0
        have = f"{float(got.group(1)):.{decimals}f}"
        if have != want:
            fail(f"{rel}: header says {want} GiB max per rank on {np_} ranks, the dry run says {got.group(1)}")
            return
    print(f"ok   {rel}: dry run on {np_} ranks, max {got.group(1)} GiB per rank")


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\s*\[[^\]]+\]:\s*(\S+)", re.M)


def slugs(md_path):
    text = re.sub(r"```.*?```", "", open(md_path).read(), flags=re.S)
    out = set()
    for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M):
        out.add(re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-"))
    return out


def check_links(path):
    text = open(path).read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)
    n = 0
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue
        n += 1
        file_part, _, frag = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(resolved):
            fail(f"{os.path.relpath(path, SRC)}: link '{target}' -> {os.path.relpath(resolved, SRC)} does not exist")
        elif frag and resolved.endswith(".md") and frag not in slugs(resolved):
            fail(f"{os.path.relpath(path, SRC)}: link '{target}': no heading '#{frag}' in {os.path.relpath(resolved, SRC)}")
    print(f"ok   {os.path.relpath(path, SRC)}: {n} relative link(s) checked")


def main():
    jobs = sorted(p for p in glob.glob(os.path.join(SRC, "configs", "*.yaml"))
                  if not os.path.basename(p).startswith("demo-"))
    if not jobs:
        fail("no job files in configs/")
    for p in jobs:
        check_job(p)
    docs = sorted(glob.glob(os.path.join(SRC, "docs", "*.md"))) + [os.path.join(SRC, "README.md")]
    for p in docs:
        check_links(p)
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print(f"{len(jobs)} job file(s), {len(docs)} document(s): ok")


if __name__ == "__main__":
    main()
