"""projcomp_tokenize: the Hugging Face tokenizer behind `projcomp-data --tokenizer`.

usage: python projcomp_tokenize.py TOKENIZER.json [EOS_TOKEN [auto|none]]

Speaks a small binary protocol on stdin/stdout with projcomp-data, which keeps the
document splitting, the validation split and the HDF5 shard writing:
  first it writes one line "vocab_size eos_id bos_id name\n";
  then for each request, a batch of documents (a 4-byte little-endian count, then for
  each document a 4-byte little-endian length and that many bytes of UTF-8 text,
  invalid bytes replaced), it encodes them together (in parallel, the library's
  encode_batch) and replies, for each document in order, with a 4-byte little-endian
  count and as many little-endian uint32 token ids: the tokenizer's own prefix of a
  sequence (its post-processor's special tokens before the text: Llama's bos), unless
  the third argument is "none", then the text's ids (a special token's text in a
  document is encoded as text); end of input ends it. bos_id is the prefix's first id,
  or -1 where there is none. vocab_size is the largest id + 1 (ids may have gaps).
The eos token is EOS_TOKEN, else the first of <|endoftext|>, </s>, <|end_of_text|>,
<eos> that the vocabulary holds."""
import array
import os
import struct
import sys


def main():
    if len(sys.argv) not in (2, 3, 4) or (len(sys.argv) == 4 and sys.argv[3] not in ("auto", "none")):
        sys.exit(__doc__.split("\n\n")[1])
    try:
        from tokenizers import Tokenizer
    except ImportError:
        sys.exit(f"projcomp_tokenize: the Python package 'tokenizers' is not installed for {sys.executable} "
                 "(pip install tokenizers, or point --python / PROJCOMP_PYTHON at a Python that has it)")
    path = sys.argv[1]
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # the library raises its own exception types
        sys.exit(f"projcomp_tokenize: {path}: not a tokenizer.json the tokenizers library reads: {e}")
    # a tokenizer.json saved after a padded or truncated call keeps those settings, which
    # would pad a batch's documents to its longest or cut them: each is encoded whole
    tok.no_padding()
    tok.no_truncation()
    names = [sys.argv[2]] if len(sys.argv) >= 3 and sys.argv[2] else \
        ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"]
    eos = next((tok.token_to_id(n) for n in names if tok.token_to_id(n) is not None), None)
    added = tok.get_added_tokens_decoder() if hasattr(tok, "get_added_tokens_decoder") else {}
    if eos is None:
        special = [t.content for _, t in sorted(added.items()) if t.special][:20]
        has = f"; its special tokens: {special}" if special else "; it has no special tokens"
        if len(names) == 1:  # named with --eos-token
            sys.exit(f"projcomp_tokenize: {path}: --eos-token {names[0]!r} is not a token of this tokenizer{has}")
        sys.exit(f"projcomp_tokenize: {path}: no eos token among {names}; name one with --eos-token{has}")
    t = added.get(eos)
    if t is not None and not t.special:  # flagged special, its text in a document is encoded as text below
        from tokenizers import AddedToken
        tok.add_special_tokens([AddedToken(t.content, single_word=t.single_word, lstrip=t.lstrip, rstrip=t.rstrip,
                                           normalized=t.normalized, special=True)])
    elif t is None and added:
        print(f"projcomp_tokenize: warning: {path}: the eos token (id {eos}) is an ordinary token of the "
              f"vocabulary, not one of its added tokens: text may produce id {eos} inside a document",
              file=sys.stderr)
    # ids may have gaps: the shards' vocab_size must exceed every one, not count them
    vocab = max(tok.get_vocab_size(with_added_tokens=True),
                1 + max(tok.get_vocab(with_added_tokens=True).values(), default=-1))
    # what the tokenizer itself puts before a text (tokenizer(text) in transformers: Llama's
    # <s> or <|begin_of_text|>), found by encoding a probe with and without its special
    # tokens: each document starts with it, as the model saw documents in pretraining
    prefix = []
    if len(sys.argv) < 4 or sys.argv[3] == "auto":
        plain = tok.encode("a", add_special_tokens=False).ids
        full = tok.encode("a", add_special_tokens=True).ids
        for k in range(len(full) - len(plain) + 1):
            if full[k:k + len(plain)] == plain:
                prefix = [i for i in full[:k] if i != eos]
                break
    bos = prefix[0] if prefix else -1
    # a special token's text inside a document ("</s>" in a web page) is text, encoded as
    # such: only projcomp-data's own eos ends a document
    tok.encode_special_tokens = True
    out, inp = sys.stdout.buffer, sys.stdin.buffer
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
    name = name.replace("\n", " ").replace("\r", " ")  # the header is one line
    out.write(f"{vocab} {eos} {bos} {name}\n".encode())
    out.flush()
    u32 = next(c for c in "IL" if array.array(c).itemsize == 4)  # uint32 on every platform
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        texts = []
        for _ in range(struct.unpack("<I", head)[0]):
            (n,) = struct.unpack("<I", inp.read(4))
            texts.append(inp.read(n).decode("utf-8", errors="replace"))
        reply = []
        for enc in tok.encode_batch(texts, add_special_tokens=False):
            ids = array.array(u32, prefix + enc.ids)
            if sys.byteorder == "big":
                ids.byteswap()
            reply += [struct.pack("<I", len(ids)), ids.tobytes()]
        out.write(b"".join(reply))
        out.flush()


if __name__ == "__main__":
    main()
