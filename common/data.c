/* placeholder: common/data.c is being written */
typedef int pc_placeholder_data;
