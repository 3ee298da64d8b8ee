/* example.c: run an edgeformer bundle on raw float32 input, in plain C over edgeformer.h.
 *
 *   example BUNDLE_DIR INPUT.bin OUTPUT.bin [GOLDEN.bin] [--atol X] [--threads N] [--repeat N]
 *
 * INPUT.bin holds every input, concatenated in io.json order, as little-endian float32;
 * OUTPUT.bin receives every output the same way.  For a streaming bundle INPUT.bin holds T frames
 * (T * ef_frame_size floats): they are stepped one by one, then flushed, and OUTPUT.bin gets the
 * final logits (the parallel model's output on the whole sequence).  With GOLDEN.bin the max abs
 * error against it is printed, and the exit code is 1 when it exceeds --atol (default 1e-4).
 * --repeat N runs N more times and prints the median latency in ms.  Exit 2 on bad usage.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgeformer.h"

static float* read_floats(const char* path, size_t* count) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long bytes = ftell(f);
  fseek(f, 0, SEEK_SET);
  if (bytes < 0 || bytes % 4) {
    fclose(f);
    return NULL;
  }
  float* data = (float*)malloc(bytes ? (size_t)bytes : 1);
  if (data && fread(data, 1, (size_t)bytes, f) != (size_t)bytes) {
    free(data);
    data = NULL;
  }
  fclose(f);
  *count = (size_t)bytes / 4;
  return data;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

/* One inference: run (or stream) `in` into `out`.  Returns the status. */
static ef_status infer(ef_model* m, const float* in, size_t frames, float* out, char* err, size_t err_len) {
  if (ef_is_streaming(m)) {
    ef_status s = ef_reset(m, err, err_len);
    for (size_t t = 0; s == EF_OK && t < frames; ++t) s = ef_step(m, in + t * ef_frame_size(m), 0, out, err, err_len);
    for (size_t k = 0; s == EF_OK && k < ef_delay_frames(m); ++k) s = ef_step(m, NULL, 1, out, err, err_len);
    return s;
  }
  size_t n_in = ef_num_inputs(m), n_out = ef_num_outputs(m);
  const float* ins[64];
  float* outs[64];
  if (n_in > 64 || n_out > 64) return EF_ERR_ARGUMENT;
  for (size_t i = 0, off = 0; i < n_in; off += ef_input_size(m, i), ++i) ins[i] = in + off;
  for (size_t o = 0, off = 0; o < n_out; off += ef_output_size(m, o), ++o) outs[o] = out + off;
  return ef_run(m, ins, outs, err, err_len);
}

int main(int argc, char** argv) {
  const char* pos[4] = {NULL, NULL, NULL, NULL};
  int n_pos = 0, threads = 0, repeat = 0;
  double atol = 1e-4;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--atol") && i + 1 < argc) atol = atof(argv[++i]);
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
    else if (n_pos < 4 && argv[i][0] != '-') pos[n_pos++] = argv[i];
    else n_pos = 99;
  }
  if (n_pos < 3 || n_pos > 4 || repeat < 0 || threads < 0) {
    fprintf(stderr, "usage: %s BUNDLE_DIR INPUT.bin OUTPUT.bin [GOLDEN.bin] [--atol X] [--threads N] [--repeat N]\n",
            argv[0]);
    return 2;
  }
  char err[1024];
  ef_model* m = NULL;
  if (ef_open(pos[0], threads, &m, err, sizeof err) != EF_OK) {
    fprintf(stderr, "error: %s\n", err);
    return 2;
  }
  size_t want_in = 0, n_out = 0, frames = 1;
  if (ef_is_streaming(m)) {
    want_in = ef_frame_size(m);
    n_out = ef_logits_size(m);
  } else {
    for (size_t i = 0; i < ef_num_inputs(m); ++i) want_in += ef_input_size(m, i);
    for (size_t o = 0; o < ef_num_outputs(m); ++o) n_out += ef_output_size(m, o);
  }
  size_t n_in = 0;
  float* in = read_floats(pos[1], &n_in);
  if (!in || n_in == 0 || n_in % want_in || (!ef_is_streaming(m) && n_in != want_in)) {
    fprintf(stderr, "error: %s must hold %s%zu float32 values (it holds %zu)\n", pos[1],
            ef_is_streaming(m) ? "a multiple of " : "", want_in, n_in);
    ef_close(m);
    return 2;
  }
  frames = n_in / want_in;
  float* out = (float*)calloc(n_out, sizeof(float));
  printf("%s; %zu inputs (%s", ef_runtime(m), ef_num_inputs(m), ef_input_name(m, 0));
  printf(") %zu outputs (%s)%s\n", ef_num_outputs(m), ef_output_name(m, 0), ef_is_streaming(m) ? "; streaming" : "");
  if (ef_is_streaming(m)) printf("streamed %zu frames, %zu flush steps\n", frames, ef_delay_frames(m));
  int rc = 0;
  if (infer(m, in, frames, out, err, sizeof err) != EF_OK) {
    fprintf(stderr, "error: %s\n", err);
    rc = 3;
  }
  FILE* f = rc ? NULL : fopen(pos[2], "wb");
  if (!rc && (!f || fwrite(out, sizeof(float), n_out, f) != n_out)) {
    fprintf(stderr, "error: cannot write %s\n", pos[2]);
    rc = 2;
  }
  if (f) fclose(f);
  if (!rc && pos[3]) {
    size_t n_gold = 0;
    float* gold = read_floats(pos[3], &n_gold);
    if (!gold || n_gold != n_out) {
      fprintf(stderr, "error: %s must hold %zu float32 values\n", pos[3], n_out);
      rc = 2;
    } else {
      double max_err = 0;
      for (size_t k = 0; k < n_out; ++k) {
        double e = fabs((double)out[k] - (double)gold[k]);
        if (e > max_err || isnan(e)) max_err = isnan(e) ? INFINITY : e;
      }
      printf("max_abs_error %.3g (atol %.3g): %s\n", max_err, atol, max_err <= atol ? "PASS" : "FAIL");
      if (max_err > atol) rc = 1;
    }
    free(gold);
  }
  if (!rc && repeat > 0) {
    double* t = (double*)malloc(sizeof(double) * (size_t)repeat);
    for (int r = 0; r < repeat && !rc; ++r) {
      double t0 = now_ms();
      if (infer(m, in, frames, out, err, sizeof err) != EF_OK) {
        fprintf(stderr, "error: %s\n", err);
        rc = 3;
      }
      t[r] = now_ms() - t0;
    }
    qsort(t, (size_t)repeat, sizeof(double), cmp_double);
    if (!rc) printf("median_ms %.4f over %d runs\n", t[repeat / 2], repeat);
    free(t);
  }
  free(out);
  free(in);
  ef_close(m);
  return rc;
}
