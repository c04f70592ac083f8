/* placeholder: worker/llama.c is being written */
typedef int pc_placeholder_llama;
