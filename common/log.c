/* placeholder: common/log.c is being written */
typedef int pc_placeholder_log;
