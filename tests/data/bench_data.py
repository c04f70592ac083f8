"""bench_data: projcomp-data's throughput and memory, beside its ceiling.

  python tests/data/bench_data.py [--build build] [--docs N]

Makes a corpus of N paragraphs (default 60000, about 37 MB), trains a small byte-level
BPE tokenizer on part of it, then converts the corpus three ways: byte-level, with
--tokenizer, and with the tokenizers library's own encode_batch over the same paragraphs
in this process (the ceiling for the --tokenizer path: no pipes, no shards). Prints
tokens per second, wall time and projcomp-data's peak RSS (with its tokenizer helper)
for each.
"""
import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("PC_BUILD", "build"))
    ap.add_argument("--docs", type=int, default=60000)
    a = ap.parse_args()
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tool = os.path.join(a.build, "daemon", "projcomp-data")
    root = pclib.tmpdir("pc-bench-data-")
    rng = random.Random(0)
    words = ("model rank shard the of gradient projection compress token layer and a to in is weight matrix train "
             "data loss").split()
    paras = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 200))) + f" {i}." for i in range(a.docs)]
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n\n".join(paras) + "\n")
    sample = os.path.join(root, "sample.txt")
    with open(sample, "w") as f:
        f.write("\n\n".join(paras[:2000]) + "\n")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train([sample], trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", "</s>"],
                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tj = os.path.join(root, "tok", "tokenizer.json")
    os.makedirs(os.path.dirname(tj))
    tok.save(tj)
    print(f"corpus: {a.docs} paragraphs, {os.path.getsize(corpus) / 1e6:.1f} MB; {os.cpu_count()} CPUs")
    print(f"{'conversion':<40} {'tokens':>10} {'time':>8} {'M tok/s':>8} {'peak RSS':>10}")
    os.environ["PROJCOMP_PYTHON"] = sys.executable  # the tokenizer helper's Python: this one
    for name, extra in (("projcomp-data, bytes", []), ("projcomp-data --tokenizer", ["--tokenizer", tj])):
        out = os.path.join(root, name.split()[-1].strip("-"))
        t0 = time.time()
        r, rss = pclib.run_peak_rss([tool, "--out", out, *extra, corpus], timeout=3600)
        dt = time.time() - t0
        if r.returncode != 0:
            sys.exit(f"{name} failed: {r.stderr}")
        n = int(r.stdout.split(" tokens")[0].rsplit(" ", 1)[1])
        print(f"{name:<40} {n:>10} {dt:>7.2f}s {n / dt / 1e6:>8.2f} {rss:>7.1f} MiB")
    t0 = time.time()
    n = sum(len(e.ids) + 1 for e in tok.encode_batch(paras, add_special_tokens=False))
    dt = time.time() - t0
    print(f"{'tokenizers encode_batch (ceiling)':<40} {n:>10} {dt:>7.2f}s {n / dt / 1e6:>8.2f}")


if __name__ == "__main__":
    main()
