/* config-doc: prints the job-config reference (docs/config.md) generated from the key
 * table in config_keys.h. Usage: config-doc > docs/config.md */
#include <stdio.h>

#include "config.h"

int main(int argc, char **argv) {
    (void)argv;
    if (argc != 1) {
        fprintf(stderr, "usage: config-doc > docs/config.md\n");
        return 2;
    }
    config_print_doc(stdout);
    return fflush(stdout) == 0 ? 0 : 1;
}
