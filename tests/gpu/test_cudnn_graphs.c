/* cudnn-graphs-offline: the attention graphs attention_cudnn.c builds, checked by cuDNN
 * itself on a machine without a GPU. For the device properties of an H100 SXM and of an
 * H200 (cuDNN's JSON form of them), each shape's forward and backward graph must finalize
 * and be matched by cuDNN's heuristics to engine configs that pass its support checks
 * (the engines' own check of the graph's structure: operation kinds, data types,
 * layouts). A head_dim no engine takes must find none, so the check can fail. Whether
 * the engines compute attention is for the GPU tests (gpu-backend-ops: cuDNN's against
 * the CPU backend). Skips (77) where cuDNN 9.8 or later cannot be loaded.
 *
 * cuDNN's support checks load the CUDA driver first: tests/gpu/cuda_stub stands in for
 * it (meson puts it on this test's LD_LIBRARY_PATH). */
#include <stdio.h>
#include <string.h>

#include "attention_cudnn.h"

/* cudaDeviceProp's figures as cuDNN's device-properties JSON names them */
static const char h100[] =
    "{\"maxGridSize\":[2147483647,65535,65535],\"maxBlockSize\":[1024,1024,64],\"regsPerBlock\":65536,"
    "\"multiProcessorCount\":132,\"warpSize\":32,\"maxSharedMemoryPerBlock\":49152,"
    "\"maxSharedMemoryPerBlockOptin\":232448,\"reservedSharedMemoryPerBlock\":1024,\"maxRegistersPerSM\":65536,"
    "\"maxCtasPerSM\":32,\"maxThreadsPerBlock\":1024,\"maxThreadsPerSM\":2048,\"pciDeviceId\":8994,"
    "\"isTccDriver\":0,\"supportCoopLaunch\":1,\"totalGlobalMem\":85029158912,\"smClockRateKHz\":1980000,"
    "\"memClockRateKHz\":2619000,\"l2CacheSize\":52428800,\"cudaDeviceId\":0,\"deviceVer\":900,"
    "\"driverVer\":13000,\"deviceName\":\"NVIDIA H100 80GB HBM3\"}";
static const char h200[] =
    "{\"maxGridSize\":[2147483647,65535,65535],\"maxBlockSize\":[1024,1024,64],\"regsPerBlock\":65536,"
    "\"multiProcessorCount\":132,\"warpSize\":32,\"maxSharedMemoryPerBlock\":49152,"
    "\"maxSharedMemoryPerBlockOptin\":232448,\"reservedSharedMemoryPerBlock\":1024,\"maxRegistersPerSM\":65536,"
    "\"maxCtasPerSM\":32,\"maxThreadsPerBlock\":1024,\"maxThreadsPerSM\":2048,\"pciDeviceId\":8997,"
    "\"isTccDriver\":0,\"supportCoopLaunch\":1,\"totalGlobalMem\":150754820096,\"smClockRateKHz\":1980000,"
    "\"memClockRateKHz\":3201000,\"l2CacheSize\":62914560,\"cudaDeviceId\":0,\"deviceVer\":900,"
    "\"driverVer\":13000,\"deviceName\":\"NVIDIA H200\"}";

static int fails, checks;

static void check(int ok, const char *what)
{
    checks++;
    if (!ok) fails++;
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
}

int main(void)
{
    const struct {
        const char *name, *json;
    } devs[] = {{"H100", h100}, {"H200", h200}};
    /* B, T, H, KV, hd: GQA, the 1B benchmark's and an 8B layer's attention, T not a
     * multiple of any tile and T 1, head_dim 32 to 128, one KV head, the shapes
     * gpu-backend-ops runs cuDNN at */
    const int shapes[][5] = {{2, 256, 4, 2, 64}, {4, 2048, 32, 8, 64}, {1, 4096, 32, 8, 128},
                             {1, 1000, 8, 8, 128}, {2, 130, 6, 2, 48}, {1, 97, 4, 1, 64},
                             {2, 1, 4, 2, 64},     {1, 65, 8, 1, 32},   {2, 40, 3, 3, 80}};
    char err[1024], what[1400];
    for (size_t di = 0; di < sizeof devs / sizeof devs[0]; di++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (int bwd = 0; bwd < 2; bwd++) {
                const int *s = shapes[si];
                int viable = 0;
                err[0] = 0;
                int rc = attn_cudnn_check_offline(devs[di].json, bwd, s[0], s[1], s[2], s[3], s[4], &viable, err,
                                                  sizeof err);
                if (rc == 77) {
                    printf("skip: %s\n", err);
                    return 77;
                }
                snprintf(what, sizeof what, "%s %s B %d T %d heads %d/%d x %d: %d engine configs pass%s%s",
                         devs[di].name, bwd ? "backward" : "forward", s[0], s[1], s[2], s[3], s[4], viable,
                         *err ? ": " : "", err);
                check(rc == 0 && viable >= 1, what);
            }
    /* head_dim 36: a head's 72 bytes break the 16-byte alignment every engine needs, so
     * none may pass (head_dim 512 would not do: a forward engine that is not flash
     * attention takes it) */
    for (int bwd = 0; bwd < 2; bwd++) {
        int viable = -1;
        err[0] = 0;
        int rc = attn_cudnn_check_offline(h100, bwd, 1, 256, 2, 2, 36, &viable, err, sizeof err);
        snprintf(what, sizeof what, "H100 %s head_dim 36: refused (%d configs%s%s)", bwd ? "backward" : "forward",
                 viable, *err ? ": " : "", err);
        check(rc == -1 && viable == 0 && strstr(err, "no engine"), what);
    }
    printf("%d checks, %d failed\n", checks, fails);
    return fails ? 1 : 0;
}
