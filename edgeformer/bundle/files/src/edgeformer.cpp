// edgeformer.cpp: the C API of edgeformer.h over one runtime backend (backend_<runtime>.cpp).
// Every entry point catches everything: no exception crosses the C boundary.
#include "edgeformer.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "backend.hpp"

struct ef_model {
  const ef::BundleInfo* info = nullptr;
  std::unique_ptr<ef::Backend> backend;
  std::string runtime;
  // Streaming: every state's current value, and scratch buffers for one step.
  std::vector<std::vector<float>> state;
  std::vector<std::vector<float>> in_buf, out_buf;
};

namespace {

void set_err(char* err, size_t err_len, const std::string& msg) {
  if (err == nullptr || err_len == 0) return;
  size_t n = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

// Run `body`, mapping exceptions to a status and a message.
template <class F>
ef_status guarded(char* err, size_t err_len, F&& body) {
  try {
    body();
    set_err(err, err_len, "");
    return EF_OK;
  } catch (const ef::Error& e) {
    set_err(err, err_len, e.what());
    return static_cast<ef_status>(e.status);
  } catch (const std::bad_alloc&) {
    set_err(err, err_len, "out of memory");
    return EF_ERR_INTERNAL;
  } catch (const std::exception& e) {
    set_err(err, err_len, std::string("runtime error: ") + e.what());
    return EF_ERR_RUNTIME;
  } catch (...) {
    set_err(err, err_len, "unknown error");
    return EF_ERR_INTERNAL;
  }
}

const ef::TensorInfo* tensor(const ef_model* m, size_t i, bool input) {
  if (m == nullptr) return nullptr;
  const auto& v = input ? m->info->inputs : m->info->outputs;
  return i < v.size() ? &v[i] : nullptr;
}

void reset_state(ef_model* m) {
  const ef::BundleInfo& info = *m->info;
  m->state.resize(info.states.size());
  for (size_t s = 0; s < info.states.size(); ++s)
    m->state[s].assign(info.inputs[info.states[s].input].size(), info.states[s].initial);
}

}  // namespace

extern "C" {

int ef_api_version(void) { return EF_API_VERSION; }

const char* ef_status_name(ef_status status) {
  switch (status) {
    case EF_OK: return "EF_OK";
    case EF_ERR_ARGUMENT: return "EF_ERR_ARGUMENT";
    case EF_ERR_IO: return "EF_ERR_IO";
    case EF_ERR_RUNTIME: return "EF_ERR_RUNTIME";
    case EF_ERR_NOT_STREAMING: return "EF_ERR_NOT_STREAMING";
    case EF_ERR_INTERNAL: return "EF_ERR_INTERNAL";
  }
  return "EF_ERR_UNKNOWN";
}

ef_status ef_open(const char* bundle_dir, int num_threads, ef_model** model, char* err, size_t err_len) {
  if (model != nullptr) *model = nullptr;
  return guarded(err, err_len, [&] {
    if (bundle_dir == nullptr || model == nullptr) throw ef::Error(EF_ERR_ARGUMENT, "bundle_dir and model must not be NULL");
    if (num_threads < 0) throw ef::Error(EF_ERR_ARGUMENT, "num_threads must be >= 0 (0 = the bundle's default)");
    const ef::BundleInfo& info = ef::bundle_info();
    std::string dir(bundle_dir);
    std::string path = dir + "/" + info.model_file;
    if (!std::ifstream(dir + "/io.json").good())
      throw ef::Error(EF_ERR_IO, dir + " is not an edgeformer bundle (no io.json): pass the bundle folder");
    if (!std::ifstream(path).good()) throw ef::Error(EF_ERR_IO, "cannot read " + path + ": is the bundle complete?");
    auto m = std::make_unique<ef_model>();
    m->info = &info;
    m->backend = ef::open_backend(path, num_threads > 0 ? num_threads : info.default_threads, info);
    m->runtime = m->backend->version();
    if (info.frame_input >= 0) {
      reset_state(m.get());
      for (const auto& t : info.inputs) m->in_buf.emplace_back(t.size());
      for (const auto& t : info.outputs) m->out_buf.emplace_back(t.size());
    }
    *model = m.release();
  });
}

void ef_close(ef_model* model) { delete model; }

const char* ef_runtime(const ef_model* model) { return model ? model->runtime.c_str() : nullptr; }

size_t ef_num_inputs(const ef_model* model) { return model ? model->info->inputs.size() : 0; }
size_t ef_num_outputs(const ef_model* model) { return model ? model->info->outputs.size() : 0; }

const char* ef_input_name(const ef_model* m, size_t i) {
  const auto* t = tensor(m, i, true);
  return t ? t->name.c_str() : nullptr;
}
const char* ef_output_name(const ef_model* m, size_t i) {
  const auto* t = tensor(m, i, false);
  return t ? t->name.c_str() : nullptr;
}
const char* ef_input_dtype(const ef_model* m, size_t i) { return tensor(m, i, true) ? "float32" : nullptr; }
const char* ef_output_dtype(const ef_model* m, size_t i) { return tensor(m, i, false) ? "float32" : nullptr; }
size_t ef_input_rank(const ef_model* m, size_t i) {
  const auto* t = tensor(m, i, true);
  return t ? t->shape.size() : 0;
}
size_t ef_output_rank(const ef_model* m, size_t i) {
  const auto* t = tensor(m, i, false);
  return t ? t->shape.size() : 0;
}
const int64_t* ef_input_shape(const ef_model* m, size_t i) {
  const auto* t = tensor(m, i, true);
  return t ? t->shape.data() : nullptr;
}
const int64_t* ef_output_shape(const ef_model* m, size_t i) {
  const auto* t = tensor(m, i, false);
  return t ? t->shape.data() : nullptr;
}
size_t ef_input_size(const ef_model* m, size_t i) {
  const auto* t = tensor(m, i, true);
  return t ? t->size() : 0;
}
size_t ef_output_size(const ef_model* m, size_t i) {
  const auto* t = tensor(m, i, false);
  return t ? t->size() : 0;
}

ef_status ef_run(ef_model* model, const float* const* inputs, float* const* outputs, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (model == nullptr || inputs == nullptr || outputs == nullptr)
      throw ef::Error(EF_ERR_ARGUMENT, "model, inputs and outputs must not be NULL");
    for (size_t i = 0; i < model->info->inputs.size(); ++i)
      if (inputs[i] == nullptr) throw ef::Error(EF_ERR_ARGUMENT, "input " + model->info->inputs[i].name + " is NULL");
    for (size_t i = 0; i < model->info->outputs.size(); ++i)
      if (outputs[i] == nullptr) throw ef::Error(EF_ERR_ARGUMENT, "output " + model->info->outputs[i].name + " is NULL");
    model->backend->run(inputs, outputs);
  });
}

int ef_is_streaming(const ef_model* m) { return m != nullptr && m->info->frame_input >= 0; }
size_t ef_frame_size(const ef_model* m) {
  return ef_is_streaming(m) ? m->info->inputs[m->info->frame_input].size() : 0;
}
size_t ef_logits_size(const ef_model* m) {
  return ef_is_streaming(m) ? m->info->outputs[m->info->logits_output].size() : 0;
}
size_t ef_delay_frames(const ef_model* m) {
  return ef_is_streaming(m) ? static_cast<size_t>(m->info->delay_frames) : 0;
}

ef_status ef_reset(ef_model* model, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (model == nullptr) throw ef::Error(EF_ERR_ARGUMENT, "model must not be NULL");
    if (!ef_is_streaming(model)) throw ef::Error(EF_ERR_NOT_STREAMING, "this bundle is not a streaming model");
    reset_state(model);
  });
}

ef_status ef_step(ef_model* model, const float* frame, int flush, float* logits, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (model == nullptr || logits == nullptr) throw ef::Error(EF_ERR_ARGUMENT, "model and logits must not be NULL");
    if (!ef_is_streaming(model)) throw ef::Error(EF_ERR_NOT_STREAMING, "this bundle is not a streaming model");
    if (frame == nullptr && !flush) throw ef::Error(EF_ERR_ARGUMENT, "frame is NULL on a step with flush = 0");
    const ef::BundleInfo& info = *model->info;
    std::vector<const float*> in(info.inputs.size());
    std::vector<float*> out(info.outputs.size());
    auto& frame_buf = model->in_buf[info.frame_input];
    if (frame != nullptr)
      std::memcpy(frame_buf.data(), frame, frame_buf.size() * sizeof(float));
    else
      std::fill(frame_buf.begin(), frame_buf.end(), 0.0f);
    in[info.frame_input] = frame_buf.data();
    model->in_buf[info.flush_input].assign(model->in_buf[info.flush_input].size(), flush ? 1.0f : 0.0f);
    in[info.flush_input] = model->in_buf[info.flush_input].data();
    for (size_t s = 0; s < info.states.size(); ++s) in[info.states[s].input] = model->state[s].data();
    for (size_t o = 0; o < out.size(); ++o) out[o] = model->out_buf[o].data();
    model->backend->run(in.data(), out.data());
    for (size_t s = 0; s < info.states.size(); ++s) model->state[s].swap(model->out_buf[info.states[s].output]);
    const auto& l = model->out_buf[info.logits_output];
    std::memcpy(logits, l.data(), l.size() * sizeof(float));
  });
}

}  // extern "C"
