/* placeholder: common/json.c is being written */
typedef int pc_placeholder_json;
