/* mfu: the device peak MFU is measured against (mfu.h). */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "mfu.h"

/* Dense bf16 tensor-core TFLOP/s by model: NVIDIA's data sheets give them with 2:4
 * sparsity, twice these. The first row whose model is a word of the name (not a part of
 * one: L4 is not L40S, H200 is not GH200) and whose qualifier, if any, is in it wins. */
static const struct {
    const char *model, *qualifier;
    double tflops;
} PEAKS[] = {
    {"H100", "PCIe", 756.5}, {"H100", "NVL", 835.5}, {"H100", NULL, 989.4},  /* SXM: 132 SMs */
    {"H200", "NVL", 835.5},  {"H200", NULL, 989.4},  {"GH200", NULL, 989.4},
    {"H800", "PCIe", 756.5}, {"H800", NULL, 989.4},  {"A100", NULL, 312.0}, /* SXM and PCIe alike */
    {"A800", NULL, 312.0},   {"L40S", NULL, 362.0},  {"L40", NULL, 181.0},
    {"L4", NULL, 121.0},     {"B200", NULL, 2250.0}, {"GB200", NULL, 2500.0},
};

/* Where needle (ASCII, any case) first starts in s; NULL if nowhere. */
static const char *find_nocase(const char *s, const char *needle) {
    size_t n = strlen(needle);
    for (const char *p = s; *p; p++) {
        size_t i = 0;
        while (i < n && p[i] && tolower((unsigned char)p[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == n) return p;
    }
    return NULL;
}

/* Whether word occurs in name between non-alphanumerics (or the ends). */
static int has_word(const char *name, const char *word) {
    size_t n = strlen(word);
    for (const char *p = find_nocase(name, word); p; p = find_nocase(p + 1, word)) {
        int open = p == name || !isalnum((unsigned char)p[-1]), close = !isalnum((unsigned char)p[n]);
        if (open && close) return 1;
    }
    return 0;
}

double mfu_peak_tflops(const char *gpu_name) {
    for (size_t i = 0; i < PC_ARRAY_LEN(PEAKS); i++)
        if (has_word(gpu_name, PEAKS[i].model) &&
            (!PEAKS[i].qualifier || find_nocase(gpu_name, PEAKS[i].qualifier)))
            return PEAKS[i].tflops;
    return 0.0;
}

int mfu_setup(run_ctx *r, int cuda, int device, pc_err *e) {
    double mine = r->cfg.backend.peak_tflops;
    char name[128] = "";
    if (mine <= 0 && cuda) {
        if (pc_cuda_device_name(device, name, sizeof name) != 0) snprintf(name, sizeof name, "?");
        mine = mfu_peak_tflops(name);
    }
    double v[2] = {mine, mine > 0 ? 0.0 : 1.0}, sum[2]; /* peaks, ranks without one */
    if (comm_all_reduce(r->comm, v, sum, 2, COMM_F64, COMM_SUM, e) != 0) return -1;
    r->peak_tflops = sum[1] > 0 ? 0.0 : sum[0];
    if (r->peak_tflops > 0)
        LOGI(&r->log, "mfu against %.1f TFLOP/s: %d rank(s), this one %.1f (%s)", r->peak_tflops, r->world, mine,
             name[0] ? name : "backend.peak_tflops");
    else if (mine <= 0 && cuda)
        LOGI(&r->log, "no mfu metric: GPU %d (%s) has no known dense bf16 peak; set backend.peak_tflops", device,
             name);
    else if (mine > 0)
        LOGI(&r->log, "no mfu metric: another rank's device has no known peak; set backend.peak_tflops");
    return 0;
}
