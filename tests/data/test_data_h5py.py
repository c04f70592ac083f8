"""HDF5 token shards against h5py, and the projcomp-data tool end to end.

Shards written by h5py (uint16/uint32, attributes on /tokens or the root group, string
attributes variable- or fixed-length) must read identically through common/data
(driven by the data_probe helper); shards written by data_write_shard must read
correctly in h5py; malformed shards must fail with messages naming the file; the
sample order must match an independent NumPy-free reimplementation; projcomp-data must
turn text into byte-level shards that h5py reads back as the expected documents.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

BUILD = os.environ.get("PC_BUILD", "build")
PROBE = os.path.join(BUILD, "tests", "data", "data_probe")
TOOL = os.path.join(BUILD, "daemon", "projcomp-data")


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def dump(vocab, *paths):
    r = run(PROBE, "dump", vocab, *paths)
    if r.returncode != 0:
        raise AssertionError(f"data_probe dump failed: {r.stderr}")
    lines = r.stdout.split("\n")
    n = int(lines[0])
    toks = [int(x) for x in lines[1].split()] if n else []
    assert len(toks) == n
    return np.array(toks, dtype=np.int64)


hash64 = pclib.hash64
sample_offset = pclib.sample_offset


def write_h5py(path, tokens, dtype, vocab=None, eos=0, tokenizer="bytes", on_root=False, fixed_str=False,
               skip=()):
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("tokens", data=np.asarray(tokens, dtype=dtype))
        target = f if on_root else ds
        attrs = {"vocab_size": vocab, "eos_id": eos,
                 "tokenizer": np.bytes_(tokenizer) if fixed_str else tokenizer}
        for k, v in attrs.items():
            if k not in skip:
                target.attrs[k] = v


class TmpDirCase(unittest.TestCase):
    """A test case with a fresh temporary directory; p(name) is a path inside it."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def p(self, name):
        return os.path.join(self.dir, name)

    def rank0_log(self, job, name, *sets):
        """Run job on one rank with run.dir DIR/name and the --set values; it must succeed;
        rank 0's log."""
        d = self.p(name)
        r = pclib.projcompd(1, job, f"run.dir={d}", *sets, check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(os.path.join(d, "logs", "rank-00000.log")) as f:
            return f.read()


class Interop(TmpDirCase):
    def expect_error(self, args, *substrings):
        r = run(*args)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        for s in substrings:
            self.assertIn(s, r.stderr)
        return r

    def test_h5py_uint16_attrs_on_tokens(self):
        rng = np.random.default_rng(1)
        toks = rng.integers(0, 50000, size=3000)
        write_h5py(self.p("a.h5"), toks, np.uint16, vocab=50000, eos=7)
        np.testing.assert_array_equal(dump(50000, self.p("a.h5")), toks)

    def test_h5py_uint32_attrs_on_root_fixed_string(self):
        rng = np.random.default_rng(2)
        toks = rng.integers(0, 128256, size=2500)
        toks[5] = 128255
        write_h5py(self.p("b.h5"), toks, np.uint32, vocab=128256, eos=128001, on_root=True, fixed_str=True)
        np.testing.assert_array_equal(dump(128256, self.p("b.h5")), toks)

    def test_h5py_shards_concatenate_in_sorted_order(self):
        parts = [np.arange(i * 100, i * 100 + 100) % 1000 for i in range(3)]
        for i, part in enumerate(parts):
            write_h5py(self.p(f"s-{i:05d}.h5"), part, np.uint16 if i != 1 else np.uint32, vocab=1000)
        np.testing.assert_array_equal(dump(1000, self.p("s-*.h5")), np.concatenate(parts))

    def test_mixed_tokenizers(self):
        """Shards (of one set or of several) unlike the first in tokenizer, vocab_size or
        eos_id are named with both sets of attributes; the daemon warns about them, and
        about a validation shard it trains on and windows past the model's positions."""
        write_h5py(self.p("a.h5"), [1, 2, 0], "uint16", vocab=64, eos=0, tokenizer="tok A")
        write_h5py(self.p("b.h5"), [3, 4, 0], "uint16", vocab=64, eos=0, tokenizer="tok A", on_root=True)
        self.assertEqual(run(PROBE, "tokenizers", 0, self.p("*.h5")).stdout, "same\n")
        self.assertEqual(run(PROBE, "tokenizers", 0, self.p("a.h5"), self.p("b.h5")).stdout, "same\n")
        for name, kw in [("c.h5", dict(vocab=64, eos=0, tokenizer="tok B")),
                         ("d.h5", dict(vocab=100, eos=0, tokenizer="tok A")),
                         ("e.h5", dict(vocab=64, eos=5, tokenizer="tok A"))]:
            write_h5py(self.p(name), [1, 0], "uint16", **kw)
            want = (f"shards made by different tokenizers: {self.p('a.h5')} (tokenizer \"tok A\", vocab_size 64, "
                    f"eos_id 0) and {self.p(name)} (tokenizer \"{kw['tokenizer']}\", vocab_size {kw['vocab']}, "
                    f"eos_id {kw['eos']})\n")
            self.assertEqual(run(PROBE, "tokenizers", 0, self.p("[ab].h5"), self.p(name)).stdout, want)  # two sets
            self.assertEqual(run(PROBE, "tokenizers", 0, self.p("[ab]*.h5"), self.p(name)).stdout, want)
            os.remove(self.p(name))
        # the daemon: train shards of one tokenizer, a valid shard of another
        mcfg, shard = pclib.tiny_pretrain_inputs(self.dir)
        toks = pclib.markov_tokens(2000, 64, seed=2)
        pclib.write_shard(self.p("valid.h5"), toks, 64, tokenizer="other")
        job = self.p("job.yaml")
        pclib.write_yaml(job, {"run": {"dir": self.p("run"), "mode": "pretrain"}, "model": {"config": mcfg},
                               "data": {"train": [shard], "valid": [self.p("valid.h5")], "seq_len": 8},
                               "train": {"steps": 1, "global_batch": 2, "micro_batch": 2},
                               "eval": {"batches": 1}, "backend": {"device": "cpu"}})
        want = (f"shards made by different tokenizers: {shard} (tokenizer \"test\", vocab_size 64, eos_id 0) and "
                f"{self.p('valid.h5')} (tokenizer \"other\", vocab_size 64, eos_id 0)")
        for mode, sets in [("pretrain", []),  # eval reads data.valid only: both shards there
                           ("eval", [f"model.base={self.p('run-pretrain/final')}", "model.config=",
                                     f"data.valid=[{shard}, {self.p('valid.h5')}]"])]:
            log = self.rank0_log(job, f"run-{mode}", f"run.mode={mode}", *sets)
            self.assertIn(want, log)
            self.assertNotIn("is also in data.train", log)
            self.assertNotIn("max_position_embeddings", log)
            if mode == "pretrain":  # 1 step, the default 10 of warmup
                self.assertIn("train.warmup_steps 10 is not below train.steps 1: the lr rises the whole run", log)
        # a valid shard that train trains on (by another path), and windows longer than the
        # model's positions (max_position_embeddings 64): warned, not refused
        os.symlink(shard, self.p("same.h5"))
        log = self.rank0_log(job, "run-overlap", f"data.valid=[{self.p('same.h5')}]", "data.seq_len=80",
                             "train.warmup_steps=0", "eval.every_steps=1")
        self.assertIn(f"data.valid: {self.p('same.h5')} is also in data.train", log)
        self.assertIn("data.seq_len 80 is longer than the model's max_position_embeddings 64", log)
        self.assertNotIn("different tokenizers", log)
        self.assertNotIn("train.warmup_steps", log)
        self.assertNotIn("nothing is evaluated", log)
        # the same windows in an eval streaming the base a layer at a time: warned too, as
        # is a distillation key the eval takes and does nothing with
        log = self.rank0_log(job, "run-stream", "run.mode=eval", f"model.base={self.p('run-pretrain/final')}",
                             "model.config=", "data.seq_len=80", "eval.stream_layers=true", "distill.alpha=0.3")
        self.assertIn("data.seq_len 80 is longer than the model's max_position_embeddings 64", log)
        self.assertIn("distill.enabled: run.mode eval takes no training step, so distillation does nothing", log)
        # a run of 0 steps (it only writes the model) says nothing of its warmup; a pretrain
        # says compress.shard_grads does nothing there
        log = self.rank0_log(job, "run-zero", "train.steps=0", "train.warmup_steps=0", "compress.shard_grads=true")
        self.assertNotIn("train.warmup_steps", log)
        self.assertIn("compress.shard_grads applies to run.mode compress: pretrain all-reduces whole gradients", log)
        # evaluations asked for without a validation set: warned
        log = self.rank0_log(job, "run-novalid", "data.valid=[]", "eval.every_steps=1")
        self.assertIn("eval.every_steps 1: no data.valid is set, so nothing is evaluated", log)

    def test_many_shards(self):
        """More shards than a set keeps open (64) and than the descriptors the process may
        open: each read reopens what it needs, and the stream is whole and in order."""
        import resource
        parts = [np.arange(i * 7, i * 7 + 30) % 1000 for i in range(150)]
        for i, part in enumerate(parts):
            write_h5py(self.p(f"s-{i:05d}.h5"), part, np.uint16, vocab=1000)

        def few_fds():
            resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))
        r = subprocess.run([PROBE, "dump", "1000", self.p("s-*.h5")], capture_output=True, text=True, timeout=60,
                           preexec_fn=few_fds)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.split("\n")
        np.testing.assert_array_equal(np.array(lines[1].split(), dtype=np.int64), np.concatenate(parts))
        # windows in the sampler's order (shards out of order, evicted and reopened)
        for step in (0, 5):
            r = subprocess.run([PROBE, "batch", "1000", "7", str(step), "0", "40", "16", self.p("s-*.h5")],
                               capture_output=True, text=True, timeout=60, preexec_fn=few_fds)
            self.assertEqual(r.returncode, 0, r.stderr)
            rows = r.stdout.strip().split("\n")
            flat = np.concatenate(parts)
            for m, start in enumerate(int(x) for x in rows[0].split()):
                np.testing.assert_array_equal(np.array(rows[1 + m].split(), dtype=np.int64), flat[start:start + 41])

    def test_filter_not_available(self):
        """A shard compressed with a filter this HDF5 lacks (h5py's own LZF) is refused when
        the set is opened, naming the file and the filter, not at its first read."""
        toks = np.arange(5000) % 300
        with h5py.File(self.p("lzf.h5"), "w") as f:
            ds = f.create_dataset("tokens", data=toks.astype(np.uint16), chunks=(1000,), compression="lzf")
            ds.attrs.update({"vocab_size": 300, "eos_id": 0, "tokenizer": "t"})
        with h5py.File(self.p("gzip.h5"), "w") as f:  # a filter HDF5 has: read as any other
            ds = f.create_dataset("tokens", data=toks.astype(np.uint16), chunks=(1000,), compression="gzip")
            ds.attrs.update({"vocab_size": 300, "eos_id": 0, "tokenizer": "t"})
        np.testing.assert_array_equal(dump(300, self.p("gzip.h5")), toks)
        self.expect_error([PROBE, "dump", 300, self.p("gzip.h5"), self.p("lzf.h5")], self.p("lzf.h5"),
                          "filter 32000 ('lzf')", "cannot decode")

    def test_writer_read_by_h5py(self):
        for vocab, dtype in ((1000, np.uint16), (65536, np.uint16), (70000, np.uint32)):
            path = self.p(f"w{vocab}.h5")
            r = run(PROBE, "write", path, vocab, 3, "my tokenizer", 200000)
            self.assertEqual(r.returncode, 0, r.stderr)
            with h5py.File(path, "r") as f:
                ds = f["tokens"]
                self.assertEqual(ds.dtype, dtype)
                self.assertEqual(ds.shape, (200000,))
                self.assertIsNotNone(ds.chunks)
                self.assertEqual(int(ds.attrs["vocab_size"]), vocab)
                self.assertEqual(int(ds.attrs["eos_id"]), 3)
                tok = ds.attrs["tokenizer"]
                self.assertEqual(tok.decode() if isinstance(tok, bytes) else tok, "my tokenizer")
                want = (np.arange(200000, dtype=np.int64) * 7919 + 13) % vocab
                np.testing.assert_array_equal(ds[:].astype(np.int64), want)
            self.assertFalse(os.path.exists(path + ".tmp"))

    def test_sample_order_matches_reference(self):
        toks = np.arange(5000) % 300
        write_h5py(self.p("s0.h5"), toks[:1800], np.uint16, vocab=300)
        write_h5py(self.p("s1.h5"), toks[1800:], np.uint16, vocab=300)
        seq_len, mb = 64, 4
        for seed, step, first in ((0, 0, 0), (1234, 17, 8), (2**40 + 5, 3, 100)):
            r = run(PROBE, "batch", 300, seed, step, first, seq_len, mb, self.p("s*.h5"))
            self.assertEqual(r.returncode, 0, r.stderr)
            lines = r.stdout.strip().split("\n")
            offsets = [int(x) for x in lines[0].split()]
            want = [sample_offset(seed, step, first + m, 5000, seq_len) for m in range(mb)]
            self.assertEqual(offsets, want)
            for m in range(mb):
                row = np.array([int(x) for x in lines[1 + m].split()])
                np.testing.assert_array_equal(row, toks[want[m]:want[m] + seq_len + 1])

    def test_errors(self):
        write_h5py(self.p("float.h5"), np.zeros(10), np.float32, vocab=256)
        self.expect_error([PROBE, "dump", 256, self.p("float.h5")], "float.h5: /tokens has type float32")
        with h5py.File(self.p("twod.h5"), "w") as f:
            ds = f.create_dataset("tokens", data=np.zeros((2, 5), dtype=np.uint16))
            ds.attrs.update({"vocab_size": 256, "eos_id": 0, "tokenizer": "bytes"})
        self.expect_error([PROBE, "dump", 256, self.p("twod.h5")], "twod.h5: /tokens must be 1-D")
        with h5py.File(self.p("group.h5"), "w") as f:
            f.create_group("tokens")
        self.expect_error([PROBE, "dump", 256, self.p("group.h5")], "group.h5: /tokens is not a dataset")
        write_h5py(self.p("noeos.h5"), np.zeros(10), np.uint16, vocab=256, skip=("eos_id",))
        self.expect_error([PROBE, "dump", 256, self.p("noeos.h5")], "noeos.h5: missing attribute 'eos_id'")
        write_h5py(self.p("strvocab.h5"), np.zeros(10), np.uint16, vocab="256")
        self.expect_error([PROBE, "dump", 256, self.p("strvocab.h5")], "strvocab.h5: attribute 'vocab_size'")
        toks = np.arange(10)
        toks[3] = 300
        write_h5py(self.p("big.h5"), toks, np.uint16, vocab=256)
        self.expect_error([PROBE, "dump", 256, self.p("big.h5")], "big.h5: token 300 at index 3 >= vocab_size 256")
        write_h5py(self.p("v.h5"), np.zeros(10), np.uint16, vocab=50000)
        self.expect_error([PROBE, "dump", 32000, self.p("v.h5")], "v.h5: attribute vocab_size = 50000 exceeds")
        self.expect_error([PROBE, "dump", 256, self.p("none-*.h5")], "none-*.h5: no file matches")
        with open(self.p("junk.h5"), "wb") as f:
            f.write(b"\x89HDF\r\n junk")
        self.expect_error([PROBE, "dump", 256, self.p("junk.h5")], "junk.h5: not an HDF5 file")
        r = run(PROBE, "write", self.p("empty.h5"), 256, 0, "bytes", 0)  # an empty shard is legal
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(self.p("empty.h5"), "r") as f:
            self.assertEqual(f["tokens"].shape, (0,))
        r = run(PROBE, "write", self.p("o.h5"), 256, 300, "bytes", 5)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("o.h5: invalid shard", r.stderr)
        self.assertFalse(os.path.exists(self.p("o.h5")))


class Tool(TmpDirCase):
    def test_convert_and_inspect(self):
        docs_a = ["First paragraph,\nstill first.", "Second \"one\"\twith tab.", "Third: caf\u00e9."]
        docs_b = ["Fourth document is in the second file and is a bit longer than the rest of them."]
        with open(self.p("a.txt"), "w", encoding="utf-8") as f:
            f.write("\n\n" + "\n\n\n".join(docs_a[:2]) + "\r\n \r\n" + docs_a[2] + "\n")
        with open(self.p("b.txt"), "w", encoding="utf-8") as f:
            f.write(docs_b[0])
        out = self.p("out")
        r = run(TOOL, "--out", out, "--valid-fraction", "0.3", "--shard-tokens", "40", "--name", "demo",
                self.p("a.txt"), self.p("b.txt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("4 documents", r.stdout)
        docs = docs_a + docs_b
        stream = []
        for d in docs:
            stream += list(d.encode("utf-8")) + [256]
        self.assertIn(f"{len(stream)} tokens", r.stdout)

        def read(split):
            names = sorted(n for n in os.listdir(out) if n.startswith(f"demo-{split}-"))
            got = []
            for n in names:
                with h5py.File(os.path.join(out, n), "r") as f:
                    ds = f["tokens"]
                    self.assertEqual(ds.dtype, np.uint16)
                    self.assertLessEqual(ds.shape[0], 40)
                    self.assertEqual(int(ds.attrs["vocab_size"]), 258)
                    self.assertEqual(int(ds.attrs["eos_id"]), 256)
                    got += ds[:].tolist()
            return names, got

        train_names, train = read("train")
        valid_names, valid = read("valid")
        self.assertEqual(train + valid, stream)
        # Validation holds whole documents from the end: the last one here.
        self.assertEqual(valid, list(docs_b[0].encode()) + [256])
        self.assertEqual(train_names[0], "demo-train-00000.h5")
        self.assertEqual(len(train_names), (len(train) + 39) // 40)

        r = run(TOOL, "--inspect", os.path.join(out, "demo-valid-00000.h5"), os.path.join(out, train_names[0]))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("uint16", r.stdout)
        self.assertIn("tokens", r.stdout)
        self.assertIn("tokenizer: bytes", r.stdout)
        self.assertIn('decoded: "Fourth document is in the second file an"', r.stdout)
        self.assertIn('decoded: "First paragraph,\\nstill first.<eos>Second', r.stdout)
        first_train = train[:40]
        self.assertIn(f"documents: {first_train.count(256)} (eos count)", r.stdout)

        # The same output again is refused rather than mixed with the old shards.
        r = run(TOOL, "--out", out, "--name", "demo", self.p("a.txt"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("already exists", r.stderr)

    def test_inspect_arguments(self):
        """An --inspect argument that is a file is that file, even with [ in its name; one that
        is not is a glob, each match inspected in sorted order; a missing path or a glob
        matching nothing is named."""
        with open(self.p("t.txt"), "w") as f:
            f.write("first doc\n\nother doc\n\nthird doc\n")
        out = self.p("o")
        r = run(TOOL, "--out", out, "--shard-tokens", "10", "--valid-fraction", "0", self.p("t.txt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        shards = sorted(os.path.join(out, n) for n in os.listdir(out))
        self.assertEqual(len(shards), 3)
        r = run(TOOL, "--inspect", os.path.join(out, "train-*.h5"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([l for l in r.stdout.splitlines() if not l.startswith(" ")], shards)
        self.assertIn('decoded: "third doc<eos>"', r.stdout)
        literal = self.p("a[1].h5")
        shutil.copy(shards[2], literal)
        shutil.copy(shards[0], self.p("a1.h5"))
        r = run(TOOL, "--inspect", literal)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[0], literal)
        self.assertIn('decoded: "third doc<eos>"', r.stdout)
        r = run(TOOL, "--inspect", self.p("missing.h5"))
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr, f"projcomp-data: {self.p('missing.h5')}: cannot open: No such file or directory\n")
        r = run(TOOL, "--inspect", self.p("*.nope"))
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr, f"projcomp-data: {self.p('*.nope')}: no file matches\n")

    def test_single_document_is_split_inside(self):
        with open(self.p("one.txt"), "w") as f:
            f.write("x" * 99)
        r = run(TOOL, "--out", self.p("o"), "--valid-fraction", "0.1", self.p("one.txt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(self.p("o/train-00000.h5")) as f:
            n_train = f["tokens"].shape[0]
        with h5py.File(self.p("o/valid-00000.h5")) as f:
            n_valid = f["tokens"].shape[0]
        self.assertEqual((n_train, n_valid), (90, 10))

    def test_no_valid(self):
        with open(self.p("t.txt"), "w") as f:
            f.write("a\n\nb\n")
        r = run(TOOL, "--out", self.p("o"), "--valid-fraction", "0", self.p("t.txt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(self.p("o"))), ["train-00000.h5"])

    def test_skewed_split_warns(self):
        """One long document at the cut: the split falls far from --valid-fraction, and says so."""
        with open(self.p("t.txt"), "w") as f:
            f.write("\n\n".join("x" * n for n in (100, 100000, 10)) + "\n")
        r = run(TOOL, "--out", self.p("o"), "--valid-fraction", "0.3", self.p("t.txt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("warning: valid holds 0.011% of the tokens, not the 30% asked", r.stderr)
        r = run(TOOL, "--out", self.p("o2"), "--valid-fraction", "0.3", self.p("t.txt"), self.p("t.txt"),
                self.p("t.txt"))  # within a factor of 2: no warning
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("warning", r.stderr)

    def test_jsonl_bom(self):
        """A JSON Lines file that starts with a UTF-8 BOM, as Python's utf-8-sig reads it."""
        with open(self.p("b.jsonl"), "wb") as f:
            f.write(b'\xef\xbb\xbf{"text": "bom"}\n{"text": "two"}\n')
        r = run(TOOL, "--out", self.p("o"), "--jsonl", "--valid-fraction", "0", self.p("b.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(self.p("o/train-00000.h5")) as f:
            self.assertEqual(f["tokens"][:].tolist(), list(b"bom") + [256] + list(b"two") + [256])

    def test_jsonl(self):
        import json
        recs = [{"text": "one line", "id": 1}, {"id": 2, "text": "two\nlines\n\nand a blank one"},
                {"text": ""}, {"text": "caf\u00e9 \u6771\u4eac \U0001F600 \"quoted\" \\ tab\t"},
                {"text": "x" * 70000}]
        with open(self.p("a.jsonl"), "w", encoding="utf-8") as f:
            f.write(json.dumps(recs[0]) + "\n\n  \n" + json.dumps(recs[1], ensure_ascii=False) + "\r\n")
            f.write("\n".join(json.dumps(r) for r in recs[2:]))  # no final newline
        with open(self.p("b.jsonl"), "w") as f:
            f.write(json.dumps({"body": "other field", "text": 3}) + "\n")
        r = run(TOOL, "--out", self.p("o"), "--jsonl", "--valid-fraction", "0", self.p("a.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        want = []
        for rec in recs:
            if rec["text"]:  # an empty text is no document
                want += list(rec["text"].encode("utf-8")) + [256]
        self.assertIn("4 documents", r.stdout)
        with h5py.File(self.p("o/train-00000.h5")) as f:
            self.assertEqual(f["tokens"][:].tolist(), want)
        # the same records from standard input (how a compressed corpus is piped in)
        with open(self.p("a.jsonl"), "rb") as f:
            r = subprocess.run([TOOL, "--out", self.p("o-stdin"), "--jsonl", "--valid-fraction", "0", "-"], stdin=f,
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(self.p("o-stdin/train-00000.h5")) as f:
            self.assertEqual(f["tokens"][:].tolist(), want)
        r = run(TOOL, "--out", self.p("o-twice"), "-", "-")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("standard input can be read once only", r.stderr)
        self.assertFalse(os.path.exists(self.p("o-twice")))
        r = run(TOOL, "--out", self.p("o2"), "--jsonl", "--field", "body", "--valid-fraction", "0", self.p("b.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(self.p("o2/train-00000.h5")) as f:
            self.assertEqual(f["tokens"][:].tolist(), list(b"other field") + [256])
        # what Python's json.dumps writes by default: NaN and infinities in other members, a
        # repeated key (the last wins, as json.loads reads it), a lone surrogate (U+FFFD)
        with open(self.p("py.jsonl"), "w") as f:
            f.write(json.dumps({"score": float("nan"), "text": "a", "w": [float("inf"), -float("inf")]}) + "\n")
            f.write('{"text": "old", "text": "new"}\n')
            f.write(json.dumps({"text": "x\ud83dy"}) + "\n")
        r = run(TOOL, "--out", self.p("o3"), "--jsonl", "--valid-fraction", "0", self.p("py.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(self.p("o3/train-00000.h5")) as f:
            self.assertEqual(f["tokens"][:].tolist(), list(b"a") + [256] + list(b"new") + [256] +
                             list("x\ufffdy".encode()) + [256])
        # bad records name the file and line, and leave nothing behind
        with open(self.p("bad.jsonl"), "w") as f:
            f.write('{"text": "fine"}\n{"text": "cut\n')
        with open(self.p("arr.jsonl"), "w") as f:
            f.write('["text"]\n')
        cases = [(["--jsonl", self.p("b.jsonl")], 'b.jsonl:1: no string member "text"; it is a number'),
                 (["--jsonl", "--field", "title", self.p("b.jsonl")], 'b.jsonl:1: no string member "title" (--field'),
                 (["--jsonl", self.p("bad.jsonl")], "bad.jsonl:2: not a JSON line"),
                 (["--jsonl", self.p("arr.jsonl")], "arr.jsonl:1: not a JSON object"),
                 (["--field", "text", self.p("b.jsonl")], "--field text: only with --jsonl")]
        for args, msg in cases:
            r = run(TOOL, "--out", self.p("bad"), *args)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(msg, r.stderr)
            self.assertFalse(os.path.exists(self.p("bad")))

    def test_memory_does_not_grow_with_corpus(self):
        # 40 MB of text, 40 M tokens: holding them would take 160 MB. The tool streams
        # them through its spool, so its peak RSS is a few MB above the HDF5 library's.
        n_docs, width = 400_000, 99
        body = np.frombuffer((b"the quick brown fox jumps over the lazy dog. " * 3)[:width - 9], dtype=np.uint8)
        docs = np.empty((n_docs, width), dtype=np.uint8)
        docs[:, 9:] = body
        docs[:, :8] = np.frombuffer(b"".join(b"%08d" % i for i in range(n_docs)), dtype=np.uint8).reshape(-1, 8)
        docs[:, 8] = ord(" ")
        with open(self.p("big.txt"), "wb") as f:
            f.write(b"".join(row.tobytes() + b"\n\n" for row in docs))
        out = self.p("big")
        r, rss_mib = pclib.run_peak_rss([TOOL, "--out", out, "--shard-tokens", "3000000", self.p("big.txt")])
        self.assertEqual(r.returncode, 0, r.stderr)
        # every document is its bytes then eos; the last 5% of them are validation
        want = np.concatenate([docs.astype(np.uint16), np.full((n_docs, 1), 256, np.uint16)], axis=1).ravel()
        names = sorted(os.listdir(out))
        self.assertEqual(names, [f"train-{k:05d}.h5" for k in range(13)] + ["valid-00000.h5"])  # no spool left
        got = []
        for n in names:
            with h5py.File(os.path.join(out, n), "r") as f:
                got.append(f["tokens"][:])
        got = np.concatenate(got)
        self.assertTrue(np.array_equal(got, want), "tokens differ from the documents")
        self.assertIn(f"valid holds {n_docs // 20} documents", r.stdout)
        print(f"projcomp-data on {want.size} tokens: peak RSS {rss_mib:.1f} MiB", file=sys.stderr)
        if os.environ.get("PC_SANITIZER"):  # tests/sanitize.sh: RSS also holds the sanitizer's shadow and quarantine
            self.skipTest(f"peak RSS under {os.environ['PC_SANITIZER']} is not the tool's memory")
        self.assertLess(rss_mib, 48, "projcomp-data's memory grows with the corpus")

    def test_all_or_no_shards(self):
        # shards are written as .partial and renamed together at the end: a failure while
        # writing the third leaves no shard at all, and what a killed run leaves (.partial
        # files) does not stop a rerun, which replaces it
        with open(self.p("t.txt"), "w") as f:
            f.write("\n\n".join(f"document {i} " + "x" * 50 for i in range(40)) + "\n")
        out = self.p("o")
        os.makedirs(os.path.join(out, "train-00002.h5.partial.tmp"))  # shard 2 cannot be created
        r = run(TOOL, "--out", out, "--shard-tokens", "500", "--valid-fraction", "0.1", self.p("t.txt"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("train-00002.h5.partial", r.stderr)
        self.assertEqual(os.listdir(out), ["train-00002.h5.partial.tmp"])
        os.rmdir(os.path.join(out, "train-00002.h5.partial.tmp"))
        for name in ["train-00000.h5.partial", "train-00009.h5.partial", "valid-00000.h5.partial"]:
            with open(os.path.join(out, name), "w") as f:
                f.write("left by a killed run")
        r = run(TOOL, "--out", out, "--shard-tokens", "500", "--valid-fraction", "0.1", self.p("t.txt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        names = sorted(os.listdir(out))
        self.assertEqual(names, [f"train-{k:05d}.h5" for k in range(len(names) - 1)] + ["valid-00000.h5"])
        got = []
        for n in names:
            with h5py.File(os.path.join(out, n), "r") as f:
                got += f["tokens"][:].tolist()
        with open(self.p("t.txt"), "rb") as f:
            want = []
            for d in f.read().decode().rstrip("\n").split("\n\n"):
                want += list(d.encode()) + [256]
        self.assertEqual(got, want)

    def test_write_past_file_size_limit(self):
        """A shard that cannot be written whole (here a file size limit; a full disk or a
        quota the same) fails naming the shard and the reason, and nothing is published:
        the space is reserved first (the limit sits between the tokens' bytes and their
        whole chunks), and where it cannot be, the failure of HDF5's own writes counts."""
        import resource
        import signal

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

        path = self.p("s.h5")
        for n in (140_000, 200_000):  # 280 kB of tokens in 3 whole chunks of 131 kB; 400 kB
            r = subprocess.run([PROBE, "write", path, "1000", "0", "t", str(n)], capture_output=True, text=True,
                               timeout=60, preexec_fn=limit)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(path, r.stderr)
            self.assertIn("File too large", r.stderr)
            self.assertEqual(os.listdir(self.dir), [], "nothing is left behind")
        # a file system that cannot preallocate, under a limit it cannot see (a preloaded
        # shim): HDF5's own writes fail, when the dataset is closed; an error, not a crash
        # in HDF5's exit handler over the file whose close failed
        env = dict(os.environ, LD_PRELOAD=os.path.join(BUILD, "tests", "data", "libno_prealloc.so"))
        if os.environ.get("PC_SANITIZER"):  # tests/sanitize.sh: the shim is not the sanitizer's runtime
            env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
        for n in (140_000, 200_000):
            r = subprocess.run([PROBE, "write", path, "1000", "0", "t", str(n)], capture_output=True, text=True,
                               timeout=60, preexec_fn=limit, env=env)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(f"{path}: cannot write /tokens to {path}.tmp (disk full?)", r.stderr)
            self.assertEqual(os.listdir(self.dir), [], "nothing is left behind")
        r = run(PROBE, "write", path, "1000", "0", "t", "140000")  # without the limit: whole and exact
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_array_equal(dump(1000, path), (np.arange(140_000) * 7919 + 13) % 1000)
        self.assertEqual(os.listdir(self.dir), ["s.h5"])

    def test_too_many_shards(self):
        """Shard names have 5 digits: a --shard-tokens that would make more shards per split
        is refused before anything is written."""
        with open(self.p("t.txt"), "w") as f:
            f.write("ab" * 60000 + "\n")
        r = run(TOOL, "--out", self.p("o"), "--shard-tokens", "1", "--valid-fraction", "0", self.p("t.txt"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--shard-tokens 1: 120001 tokens would make more than 99999 shards", r.stderr)
        self.assertFalse(os.path.exists(self.p("o")))

    def test_input_errors_write_nothing(self):
        with open(self.p("ok.txt"), "w") as f:
            f.write("fine text\n")
        with open(self.p("blank.txt"), "w") as f:
            f.write("\n  \n\t\n")
        cases = [
            ([self.p("ok.txt"), self.p("missing.txt")], "missing.txt: cannot open"),
            ([self.p("ok.txt"), self.p("blank.txt")], "blank.txt: empty input"),
            ([self.p("ok.txt"), self.p(".")], ": read error: Is a directory"),
        ]
        for files, msg in cases:
            for out, made in ((self.p("o"), self.p("o")), (self.p("a/b/o"), self.p("a"))):
                r = run(TOOL, "--out", out, *files)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(msg, r.stderr)
                self.assertFalse(os.path.exists(made), f"{made} left behind")
        # a directory that cannot be made: the ones made before it are removed too
        r = run(TOOL, "--out", self.p("newd/" + "A" * 300), self.p("ok.txt"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("cannot create directory", r.stderr)
        self.assertFalse(os.path.exists(self.p("newd")), "newd left behind")
        os.mkdir(self.p("o"))  # a directory that was there stays, empty
        r = run(TOOL, "--out", self.p("o"), self.p("ok.txt"), self.p("blank.txt"))
        self.assertIn("blank.txt: empty input", r.stderr)
        self.assertEqual(os.listdir(self.p("o")), [])
        r = run(TOOL, "--out", self.p("o"), "--valid-fraction", "1.5", self.p("ok.txt"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--valid-fraction", r.stderr)
        r = run(TOOL, "--inspect", self.p("ok.txt"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ok.txt: not an HDF5 file", r.stderr)
        r = run(TOOL, "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: projcomp-data", r.stdout)


if __name__ == "__main__":
    for exe in (PROBE, TOOL):
        if not os.path.exists(exe):
            print(f"missing {exe}: build first", file=sys.stderr)
            sys.exit(1)
    unittest.main(verbosity=2)
