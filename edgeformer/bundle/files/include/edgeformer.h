/* edgeformer.h: the C API of an edgeformer bundle (https://github.com/edgeformer).
 *
 * One header for every runtime (ONNX Runtime, ExecuTorch, OpenVINO, TVM): the bundle's
 * libedgeformer_model implements it for the runtime it was built for.  Plain C99; the library is
 * C++17 inside.  No call throws across this boundary or exits the process: every fallible call
 * returns an ef_status and, when `err` is not NULL, writes a NUL-terminated message of at most
 * `err_len` bytes (truncated) into it.
 *
 * Tensors are dense, row-major (C order) float32 buffers.  A model's inputs and outputs are the
 * ones in the bundle's io.json, in that order; ef_input_size() gives each buffer's element count.
 *
 * Versioning: EF_API_VERSION grows when a function is added; existing functions keep their
 * signature and meaning.  ef_api_version() returns the version the library was built with.
 */
#ifndef EDGEFORMER_H
#define EDGEFORMER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EF_API_VERSION 1

#if defined(_WIN32)
#define EF_EXPORT __declspec(dllexport)
#else
#define EF_EXPORT __attribute__((visibility("default")))
#endif

typedef enum ef_status {
  EF_OK = 0,
  EF_ERR_ARGUMENT = 1,      /* NULL pointer, index out of range, bad thread count */
  EF_ERR_IO = 2,            /* the bundle folder or its model file is missing or unreadable */
  EF_ERR_RUNTIME = 3,       /* the runtime failed to load or run the model */
  EF_ERR_NOT_STREAMING = 4, /* ef_step / ef_reset on a bundle that is not a streaming model */
  EF_ERR_INTERNAL = 5       /* anything else (out of memory, ...) */
} ef_status;

/* An opened model.  Not thread-safe: use one ef_model per thread, or serialize calls. */
typedef struct ef_model ef_model;

/* The API version this library implements (EF_API_VERSION when it was built). */
EF_EXPORT int ef_api_version(void);

/* A constant string naming `status` ("EF_OK", "EF_ERR_IO", ...). */
EF_EXPORT const char* ef_status_name(ef_status status);

/* Open the bundle folder `bundle_dir` (the folder holding io.json and model/).
 * num_threads: intra-op threads of the runtime; 0 = the bundle's default (io.json "threads").
 * On success *model is set; on failure it is NULL and `err` says why. */
EF_EXPORT ef_status ef_open(const char* bundle_dir, int num_threads, ef_model** model, char* err,
                            size_t err_len);

/* Release the model; NULL is ignored. */
EF_EXPORT void ef_close(ef_model* model);

/* The runtime and its version, e.g. "onnxruntime 1.31.1". */
EF_EXPORT const char* ef_runtime(const ef_model* model);

/* Inputs and outputs.  Out-of-range indices give NULL / 0. */
EF_EXPORT size_t ef_num_inputs(const ef_model* model);
EF_EXPORT size_t ef_num_outputs(const ef_model* model);
EF_EXPORT const char* ef_input_name(const ef_model* model, size_t index);
EF_EXPORT const char* ef_output_name(const ef_model* model, size_t index);
EF_EXPORT const char* ef_input_dtype(const ef_model* model, size_t index);  /* "float32" */
EF_EXPORT const char* ef_output_dtype(const ef_model* model, size_t index); /* "float32" */
EF_EXPORT size_t ef_input_rank(const ef_model* model, size_t index);
EF_EXPORT size_t ef_output_rank(const ef_model* model, size_t index);
EF_EXPORT const int64_t* ef_input_shape(const ef_model* model, size_t index);  /* rank values */
EF_EXPORT const int64_t* ef_output_shape(const ef_model* model, size_t index); /* rank values */
EF_EXPORT size_t ef_input_size(const ef_model* model, size_t index);  /* element count */
EF_EXPORT size_t ef_output_size(const ef_model* model, size_t index); /* element count */

/* Run once.  inputs[i] points to ef_input_size(model, i) floats, outputs[i] to
 * ef_output_size(model, i) floats, which are overwritten. */
EF_EXPORT ef_status ef_run(ef_model* model, const float* const* inputs, float* const* outputs,
                           char* err, size_t err_len);

/* ---- Streaming bundles (compile --streaming): one step of the model per frame. ---------------
 * The model carries its recurrent state inside the ef_model.  Feed each frame with flush = 0;
 * at the end of a stream call ef_step ef_delay_frames() times with flush = 1 (the frame is
 * ignored and may be NULL); `logits` then equal the parallel model's output on the whole stream.
 * ef_reset() starts the next stream.  ef_run on a streaming bundle runs the raw step graph, with
 * every state as an explicit input and output (io.json lists them). */
EF_EXPORT int ef_is_streaming(const ef_model* model);
EF_EXPORT size_t ef_frame_size(const ef_model* model);   /* floats per frame, 0 if not streaming */
EF_EXPORT size_t ef_logits_size(const ef_model* model);  /* floats of logits, 0 if not streaming */
EF_EXPORT size_t ef_delay_frames(const ef_model* model); /* flush steps at the end of a stream */
EF_EXPORT ef_status ef_reset(ef_model* model, char* err, size_t err_len);
EF_EXPORT ef_status ef_step(ef_model* model, const float* frame, int flush, float* logits,
                            char* err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* EDGEFORMER_H */
