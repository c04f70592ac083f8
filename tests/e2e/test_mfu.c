/* test_mfu: the dense bf16 peaks the mfu metric divides by, by the names CUDA reports
 * (cudaDeviceProp.name as nvidia-smi prints it): each known model and form factor, the
 * look-alike names that must not match (L4 in L40S, H200 in GH200, A100 in A1000), and
 * unknown GPUs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "mfu.h"

static void test_known(void **state) {
    (void)state;
    static const struct {
        const char *name;
        double tflops;
    } cases[] = {
        {"NVIDIA H100 80GB HBM3", 989.4}, {"NVIDIA H100 PCIe", 756.5},      {"NVIDIA H100 NVL", 835.5},
        {"NVIDIA H100 SXM5 80GB", 989.4}, {"NVIDIA H200", 989.4},           {"NVIDIA H200 NVL", 835.5},
        {"NVIDIA GH200 480GB", 989.4},    {"NVIDIA H800", 989.4},           {"NVIDIA H800 PCIe", 756.5},
        {"NVIDIA A100-SXM4-80GB", 312.0}, {"NVIDIA A100-PCIE-40GB", 312.0}, {"NVIDIA A100 80GB PCIe", 312.0},
        {"NVIDIA A800-SXM4-80GB", 312.0}, {"NVIDIA L40S", 362.0},           {"NVIDIA L40", 181.0},
        {"NVIDIA L4", 121.0},             {"NVIDIA B200", 2250.0},          {"NVIDIA GB200", 2500.0},
        {"nvidia h100 pcie", 756.5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double got = mfu_peak_tflops(cases[i].name);
        if (got != cases[i].tflops) fail_msg("%s: %g TFLOP/s, want %g", cases[i].name, got, cases[i].tflops);
    }
}

static void test_unknown(void **state) {
    (void)state;
    static const char *names[] = {"",
                                  "?",
                                  "NVIDIA GeForce RTX 4090",
                                  "NVIDIA RTX A1000",
                                  "Tesla V100-SXM2-32GB",
                                  "NVIDIA H20",
                                  "NVIDIA L4000",
                                  "NVIDIA XH100"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        double got = mfu_peak_tflops(names[i]);
        if (got != 0.0) fail_msg("'%s': %g TFLOP/s, want 0 (unknown)", names[i], got);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_known), cmocka_unit_test(test_unknown)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
