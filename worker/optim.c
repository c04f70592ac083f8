/* placeholder: worker/optim.c is being written */
typedef int pc_placeholder_optim;
