/* placeholder: common/backend_cpu.c is being written */
typedef int pc_placeholder_backend_cpu;
