/* placeholder: common/hf_config.c is being written */
typedef int pc_placeholder_hf_config;
