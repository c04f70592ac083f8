/* placeholder: common/comm.c is being written */
typedef int pc_placeholder_comm;
