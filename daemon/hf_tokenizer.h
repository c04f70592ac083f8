/* hf_tokenizer: a Hugging Face tokenizer (tokenizer.json) for projcomp-data, run as a
 * Python child process (projcomp_tokenize.py, next to the executable) over pipes. */
#ifndef PC_HF_TOKENIZER_H
#define PC_HF_TOKENIZER_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "util.h"

typedef struct hf_tokenizer {
    pid_t pid;
    FILE *to, *from;
    int vocab_size, eos_id;
    int bos_id;     /* the first id of the prefix each document starts with, -1: none */
    char name[256]; /* recorded in the shards' tokenizer attribute */
    const char *path;
} hf_tokenizer;

/* Start `python` (NULL: $PROJCOMP_PYTHON, else python3) on the helper script with
 * tokenizer.json at path; eos_token may be NULL (a usual name is looked up). prefix: each
 * document starts with the special tokens the tokenizer puts before a text (Llama's bos;
 * none for a tokenizer without), else with its text's ids alone. */
int hf_tokenizer_open(hf_tokenizer *t, const char *python, const char *path, const char *eos_token, int prefix,
                      pc_err *e);
/* Token ids of k documents at once (the helper encodes a batch in parallel; the prefix,
 * then the text's ids): document j is text[off[j], off[j+1]) (off: k + 1 entries); its counts[j]
 * ids land in *ids after those of the documents before it. *ids (*ids_cap entries,
 * malloc'd or NULL) grows as needed and is the caller's to free. */
int hf_tokenizer_encode_batch(hf_tokenizer *t, const char *text, const int64_t *off, int k, uint32_t **ids,
                              int64_t *ids_cap, int64_t *counts, pc_err *e);
void hf_tokenizer_close(hf_tokenizer *t);

#endif
