/* A stand-in for the CUDA driver (libcuda.so.1) on a machine without a GPU, for
 * cudnn-graphs-offline only: cuDNN's support checks of an engine config load the driver
 * (dlopen) and look up these entry points before they look at the graph. Each answers
 * as a driver with one device and a current context would, without doing anything:
 * nothing is compiled into a loaded module and nothing runs (the launches fail). Never
 * on the path of a program that uses a GPU. */
#include <stddef.h>
#include <string.h>

typedef int CUresult; /* CUDA_SUCCESS 0 */
enum { OK = 0, NOT_SUPPORTED = 801 };
static char ctx_obj[64]; /* the one context, module and kernel handle */

CUresult cuInit(unsigned flags) { (void)flags; return OK; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return OK; }
CUresult cuDeviceGet(int *dev, int ordinal) { *dev = ordinal; return OK; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return OK; }
CUresult cuCtxGetCurrent(void **ctx) { *ctx = ctx_obj; return OK; }
CUresult cuCtxPushCurrent(void *ctx) { (void)ctx; return OK; }
CUresult cuCtxPopCurrent(void **ctx) { if (ctx) *ctx = ctx_obj; return OK; }
CUresult cuCtxGetLimit(size_t *v, int limit) { (void)limit; *v = 1024; return OK; }
CUresult cuStreamGetCtx(void *stream, void **ctx) { (void)stream; *ctx = ctx_obj; return OK; }
CUresult cuStreamSynchronize(void *stream) { (void)stream; return OK; }
CUresult cuGetErrorString(int e, const char **s) { (void)e; *s = "CUDA driver stand-in"; return OK; }
CUresult cuGetErrorName(int e, const char **s) { (void)e; *s = "CUDA_ERROR_NOT_SUPPORTED"; return OK; }
CUresult cuLinkCreate(unsigned n, void *opt, void **val, void **state) { (void)n, (void)opt, (void)val; *state = ctx_obj; return OK; }
CUresult cuLinkAddData(void *state, int type, void *data, size_t size, const char *name, unsigned n, void *opt, void **val)
{
    (void)state, (void)type, (void)data, (void)size, (void)name, (void)n, (void)opt, (void)val;
    return OK;
}
CUresult cuLinkComplete(void *state, void **cubin, size_t *size) { (void)state; *cubin = ctx_obj; *size = 0; return OK; }
CUresult cuLinkDestroy(void *state) { (void)state; return OK; }
CUresult cuLibraryLoadData(void **lib, const void *code, void *jo, void *jv, unsigned nj, void *lo, void *lv, unsigned nl)
{
    (void)code, (void)jo, (void)jv, (void)nj, (void)lo, (void)lv, (void)nl;
    *lib = ctx_obj;
    return OK;
}
CUresult cuLibraryLoadFromFile(void **lib, const char *f, void *jo, void *jv, unsigned nj, void *lo, void *lv, unsigned nl)
{
    (void)f, (void)jo, (void)jv, (void)nj, (void)lo, (void)lv, (void)nl;
    *lib = ctx_obj;
    return OK;
}
CUresult cuLibraryUnload(void *lib) { (void)lib; return OK; }
CUresult cuLibraryGetKernel(void **k, void *lib, const char *name) { (void)lib, (void)name; *k = ctx_obj; return OK; }
CUresult cuKernelSetAttribute(int attr, int v, void *k, int dev) { (void)attr, (void)v, (void)k, (void)dev; return OK; }
CUresult cuKernelGetAttribute(int *v, int attr, void *k, int dev) { (void)attr, (void)k, (void)dev; *v = 0; return OK; }
CUresult cuModuleUnload(void *m) { (void)m; return OK; }
CUresult cuOccupancyMaxPotentialClusterSize(int *n, void *f, const void *cfg) { (void)f, (void)cfg; *n = 8; return OK; }
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *n, void *f, int block, size_t smem)
{
    (void)f, (void)block, (void)smem;
    *n = 1;
    return OK;
}
CUresult cuTensorMapEncodeTiled(void *map) { memset(map, 0, 128); return OK; }
CUresult cuLaunchKernel(void *f) { (void)f; return NOT_SUPPORTED; }
CUresult cuLaunchKernelEx(const void *cfg) { (void)cfg; return NOT_SUPPORTED; }
CUresult cuLaunchCooperativeKernel(void *f) { (void)f; return NOT_SUPPORTED; }
