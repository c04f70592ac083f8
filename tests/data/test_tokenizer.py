"""projcomp-data --tokenizer: shards encoded with a real Hugging Face tokenizer.json.

A small BPE tokenizer is trained and saved by the `tokenizers` library; projcomp-data
converts a text file with it; every document in the shards must equal the library's own
encoding of that paragraph followed by eos, with vocab_size and eos_id recorded. A
tokenizer without a known eos token is refused unless --eos-token names one. A vocabulary
with gaps records its largest id + 1, and a document's text that spells the eos token
stays text, also where the eos is not flagged special; padding and truncation saved in a
tokenizer.json do not reach the shards. A tokenizer that puts <s> before a text (Llama's)
starts each document with it, as transformers' tokenizer(text) does, unless --no-bos."""
import os
import subprocess
import sys

import h5py
import numpy as np
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402


def convert_one(root, tok, dirname, text, what, extra=()):
    """Save tok as ROOT/DIRNAME/tokenizer.json, convert text with it (no validation split;
    extra options) and return the shard's ids, vocab_size, eos_id and tokenizer name."""
    tj = os.path.join(root, dirname, "tokenizer.json")
    os.makedirs(os.path.dirname(tj))
    tok.save(tj)
    src, out = os.path.join(root, what.replace(" ", "-") + ".txt"), os.path.join(root, "out-" + what.replace(" ", "-"))
    with open(src, "w") as f:
        f.write(text)
    p = subprocess.run([pclib.PROJCOMP_DATA, "--out", out, "--valid-fraction", "0", "--tokenizer", tj, *extra, src],
                       env=dict(pclib.env(), PROJCOMP_PYTHON=sys.executable), capture_output=True, text=True,
                       timeout=120)
    pclib.check(p.returncode == 0, f"{what}: converted ({p.stderr.strip()})")
    with h5py.File(os.path.join(out, "train-00000.h5")) as f:
        d = f["tokens"]
        name = d.attrs["tokenizer"]
        return (d[:].tolist(), int(d.attrs["vocab_size"]), int(d.attrs["eos_id"]),
                name.decode() if isinstance(name, bytes) else str(name))


def main():
    root = pclib.tmpdir("pc-tok-")
    paras = [f"Paragraph {i}: the model, the rank and the shard ({i * 7}).\nA second line {i}." for i in range(9000)]
    paras.append("Unicode too: naïve café — 東京.")
    sample = os.path.join(root, "sample.txt")  # what the tokenizers learn from
    with open(sample, "w") as f:
        f.write("\n\n".join(paras[:200] + paras[-1:]) + "\n")
    # 9000 documents and one of 1.1 MB: the helper gets several batches, ended by the
    # document count, the byte count and the end of the file
    paras.insert(5000, " ".join(f"w{i % 97}" for i in range(360_000)))
    text = os.path.join(root, "in.txt")
    with open(text, "w") as f:
        f.write("\n\n".join(paras) + "\n")
    for eos, extra in [("</s>", []), ("<sep>", ["--eos-token", "<sep>"])]:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel()
        tok.train([sample], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", eos],
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tj = os.path.join(root, f"tok-{eos.strip('<>/')}", "tokenizer.json")
        os.makedirs(os.path.dirname(tj))
        tok.save(tj)
        out = os.path.join(root, "out-" + eos.strip("<>/"))
        env = dict(pclib.env(), PROJCOMP_PYTHON=sys.executable)
        p = subprocess.run([pclib.PROJCOMP_DATA, "--out", out, "--valid-fraction", "0.1", "--tokenizer", tj, *extra,
                            text], env=env, capture_output=True, text=True, timeout=120)
        pclib.check(p.returncode == 0, f"eos {eos}: converted ({p.stdout.strip().splitlines()[0] if p.stdout else p.stderr})")
        toks, vocab, eos_id = [], None, None
        for name in sorted(os.listdir(out)):
            with h5py.File(os.path.join(out, name)) as f:
                d = f["tokens"]
                vocab, eos_id = int(d.attrs["vocab_size"]), int(d.attrs["eos_id"])
                toks.append(d[:].astype(np.int64))
        stream = np.concatenate([toks[0], toks[1]]) if len(toks) == 2 else toks[0]  # train, then valid
        pclib.check(vocab == tok.get_vocab_size(with_added_tokens=True) and eos_id == tok.token_to_id(eos),
                    f"eos {eos}: vocab_size {vocab} and eos_id {eos_id} recorded")
        # the reference: each paragraph encoded alone, then eos
        want = np.concatenate([np.array(tok.encode(para, add_special_tokens=False).ids + [eos_id], dtype=np.int64)
                               for para in paras])
        pclib.check(stream.shape == want.shape and np.array_equal(stream, want),
                    f"eos {eos}: {len(want)} tokens of {len(paras)} documents equal the library's encoding")

    # a document that encodes to no token: with eos, one token in all, too few to split
    # off validation: refused, nothing written; without a validation split it converts
    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1, "</s>": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tj = os.path.join(root, "ws.json")
    tok.save(tj)
    blank = os.path.join(root, "blank.jsonl")
    with open(blank, "w") as f:
        f.write('{"text": "   "}\n')
    env = dict(pclib.env(), PROJCOMP_PYTHON=sys.executable)
    out = os.path.join(root, "out-ws")
    p = subprocess.run([pclib.PROJCOMP_DATA, "--out", out, "--jsonl", "--tokenizer", tj, blank], env=env,
                       capture_output=True, text=True, timeout=120)
    pclib.check(p.returncode != 0 and "too few for a validation split" in p.stderr and not os.path.exists(out),
                f"one token in all: refused ({p.stderr.strip()})")
    p = subprocess.run([pclib.PROJCOMP_DATA, "--out", out, "--jsonl", "--valid-fraction", "0", "--tokenizer", tj,
                        blank], env=env, capture_output=True, text=True, timeout=120)
    pclib.check(p.returncode == 0 and os.listdir(out) == ["train-00000.h5"],
                f"one token in all, no validation split: converted ({p.stderr.strip()})")

    # ids with gaps (the largest, 7, is past the count, 4) and a document that spells the
    # eos token: vocab_size is the largest id + 1, the spelled "</s>" is text (three unknown
    # pieces here), so only the two documents' own eos tokens end documents; the directory
    # name, with a space, is recorded whole
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 7, "</s>": 5}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["</s>"])
    got, vocab, _, name = convert_one(root, tok, "tok gap", "a b\n\nb a </s> a\n", "ids with gaps")
    pclib.check(vocab == 8 and got == [1, 7, 5, 7, 1, 0, 0, 0, 1, 5] and name == "tok gap",
                f"ids with gaps: vocab_size {vocab} (want 8), tokens {got} (the spelled </s> as text: "
                f"[1, 7, 5, 7, 1, 0, 0, 0, 1, 5]), tokenizer '{name}'")

    # a tokenizer.json saved with padding and truncation on (each document is encoded
    # whole all the same: transformers turns them off too), whose eos is an added token not
    # flagged special (its spelling in a document stays text), in a directory whose name
    # holds a newline (the helper's one-line header stays one line)
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_tokens([AddedToken("</s>", special=False)])
    tok.enable_padding(pad_id=0, pad_token="<unk>")
    tok.enable_truncation(max_length=2)
    got, _, eos_id, name = convert_one(root, tok, "tok\nnl", "a b a b\n\nb </s> a\n",
                                       "padding, truncation, a plain eos")
    pclib.check(got == [1, 2, 1, 2, 3, 2, 0, 0, 0, 1, 3] and eos_id == 3 and name == "tok nl",
                f"documents whole, unpadded, the spelled </s> as text: {got} (want [1, 2, 1, 2, 3, 2, 0, 0, 0, 1, "
                f"3]), eos_id {eos_id}, tokenizer '{name}'")

    # a Llama-like tokenizer, whose post-processor puts <s> before a text (and, the second,
    # </s> after it): each document is what transformers' tokenizer(text) gives, <s> first,
    # then eos once; --no-bos leaves the <s> out
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    paras_l = ["a b a", "b a", "a"]
    for template, tag in [("<s> $A", "bos"), ("<s> $A </s>", "bos-eos")]:
        tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.add_special_tokens(["<s>", "</s>"])
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", 1), ("</s>", 2)])
        got, _, eos_id, _ = convert_one(root, tok, f"tok-{tag}", "\n\n".join(paras_l) + "\n", f"llama-like {tag}")
        hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(root, f"tok-{tag}", "tokenizer.json"))
        want = sum((hf(t)["input_ids"] + ([] if tag == "bos-eos" else [eos_id]) for t in paras_l), [])
        pclib.check(got == want and got[0] == 1, f"{tag}: documents as transformers' tokenizer(text) gives them, <s> "
                    f"first and eos once: {got} (want {want})")
        if tag == "bos":
            got, *_ = convert_one(root, tok, "tok-no-bos", "\n\n".join(paras_l) + "\n", "llama-like --no-bos",
                                  ["--no-bos"])
            want = sum((tok.encode(t, add_special_tokens=False).ids + [eos_id] for t in paras_l), [])
            pclib.check(got == want, f"--no-bos: text and eos only: {got} (want {want})")

    # no known eos token and none named: a clear error, nothing written
    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tj = os.path.join(root, "noeos.json")
    tok.save(tj)
    out = os.path.join(root, "out-noeos")
    p = subprocess.run([pclib.PROJCOMP_DATA, "--out", out, "--tokenizer", tj, text],
                       env=dict(pclib.env(), PROJCOMP_PYTHON=sys.executable), capture_output=True, text=True,
                       timeout=120)
    pclib.check(p.returncode != 0 and "no eos token" in p.stderr and not os.path.exists(out),
                f"no eos token: refused ({p.stderr.strip().splitlines()[0] if p.stderr else ''})")
    # one named that the tokenizer lacks: said so, with the special tokens it has
    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1, "<|end|>": 2}, unk_token="[UNK]"))
    tok.add_special_tokens(["<|end|>"])
    tj = os.path.join(root, "named.json")
    tok.save(tj)
    p = subprocess.run([pclib.PROJCOMP_DATA, "--out", out, "--tokenizer", tj, "--eos-token", "</s>", text],
                       env=dict(pclib.env(), PROJCOMP_PYTHON=sys.executable), capture_output=True, text=True,
                       timeout=120)
    pclib.check(p.returncode != 0 and "--eos-token '</s>' is not a token of this tokenizer; its special tokens: "
                "['<|end|>']" in p.stderr and not os.path.exists(out),
                f"--eos-token the tokenizer lacks: refused, naming its special tokens ({p.stderr.strip()[:200]})")


if __name__ == "__main__":
    main()
