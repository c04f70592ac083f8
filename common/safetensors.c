/* placeholder: common/safetensors.c is being written */
typedef int pc_placeholder_safetensors;
