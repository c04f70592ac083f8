/* placeholder: common/config.c is being written */
typedef int pc_placeholder_config;
