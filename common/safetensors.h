/* safetensors: mmap reader and writer for Hugging Face safetensors files.
 *
 * A model is one file (model.safetensors) or a set of shards named by
 * model.safetensors.index.json. Headers are validated strictly (well-formed JSON,
 * sane header size, offsets inside the file, no overlaps, byte length equal to
 * shape x dtype size). Tensor data is converted to f32 on read; row and column
 * slices of a 2-D tensor read only the bytes they need. */
#ifndef PC_SAFETENSORS_H
#define PC_SAFETENSORS_H

#include "util.h"

/* Every dtype of the safetensors format opens (a file may hold tensors nothing reads);
 * only F32, F16 and BF16 are read as values. F4 and F6 are packed below a byte. */
typedef enum {
    ST_F32 = 0,
    ST_F16,
    ST_BF16,
    ST_I32,
    ST_I64,
    ST_U8,
    ST_F64,
    ST_I8,
    ST_I16,
    ST_U16,
    ST_U32,
    ST_U64,
    ST_BOOL,
    ST_F8_E4M3,
    ST_F8_E5M2,
    ST_F8_E8M0,
    ST_C64,
    ST_F4,
    ST_F6_E2M3,
    ST_F6_E3M2,
    ST_DTYPE_COUNT
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const unsigned char *data; /* into the mmap'd file */
    size_t nbytes;
    int file;                  /* index of the shard holding it */
} st_tensor;

typedef struct st_model st_model;

/* Open a .safetensors file, or a directory holding model.safetensors or
 * model.safetensors.index.json with its shards. Errors name the file and tensor. */
int st_open(const char *path, st_model **out, pc_err *e);
void st_close(st_model *m);
int st_count(const st_model *m);
const st_tensor *st_get(const st_model *m, int i);
/* NULL when absent. */
const st_tensor *st_find(const st_model *m, const char *name);
int64_t st_numel(const st_tensor *t);
size_t st_dtype_size(st_dtype t); /* bytes an element; 0 for the packed F4 and F6 */
int st_dtype_bits(st_dtype t);     /* bits an element */
const char *st_dtype_name(st_dtype t);
/* Path of the file holding tensor t (for error messages). */
const char *st_file_path(const st_model *m, const st_tensor *t);
/* The path st_open was given (a file or a model directory). */
const char *st_source(const st_model *m);
/* Fail naming the file, tensor and element when data (n values read from tensor `name`)
 * holds a NaN or Inf. */
int st_check_finite(const st_model *m, const char *name, const float *data, size_t n, pc_err *e);

/* Whole tensor as f32; n must equal its element count. Errors name the tensor. */
int st_read_f32(const st_model *m, const char *name, float *dst, size_t n, pc_err *e);
/* Rows [row0, row0+nrows) of a 2-D tensor [R, C] -> dst [nrows, C]. */
int st_read_rows_f32(const st_model *m, const char *name, int64_t row0, int64_t nrows, float *dst, pc_err *e);
/* Columns [col0, col0+ncols) of a 2-D tensor [R, C] -> dst [R, ncols]. */
int st_read_cols_f32(const st_model *m, const char *name, int64_t col0, int64_t ncols, float *dst, pc_err *e);

/* A tensor to write, f32 values converted to out_dtype on write: its values in data, or
 * (data NULL) produced by fill(ctx, at, n, dst, e), which writes elements [at, at + n)
 * (row-major) to dst, a piece at a time, and returns 0 or -1 with e set: a tensor then
 * never needs to be whole in host memory. */
typedef struct st_item {
    const char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const float *data;
    int (*fill)(void *ctx, int64_t at, int64_t n, float *dst, pc_err *e);
    void *ctx;
} st_item;

/* Write one file atomically (temp name, fsync, rename). metadata may be NULL
 * (e.g. {"format":"pt"} is always added). */
int st_write(const char *path, const st_item *items, int n, st_dtype out_dtype, pc_err *e);
/* Write dir/model.safetensors, or when the total exceeds max_shard_bytes,
 * dir/model-0000i-of-0000N.safetensors plus model.safetensors.index.json. */
int st_write_model(const char *dir, const st_item *items, int n, st_dtype out_dtype, size_t max_shard_bytes,
                   pc_err *e);
/* Parse "f32"/"float32", "bf16"/"bfloat16", "f16"/"float16". */
int st_dtype_parse(const char *s, st_dtype *out);

#endif
