// backend_executorch.cpp: ef::Backend on the ExecuTorch C++ runtime (extension::Module).
//
// The model is model/model.pte, run with the kernels and delegates the bundle links
// (libexecutorch_kernels_optimized: the CPU operator kernels, portable ones included;
// libexecutorch_backend_xnnpack: the XNNPACK delegate, which also runs edgeformer's int8
// programs; libexecutorch_kernels_quantized, for quantize/dequantize ops left outside the
// delegate, is linked when lib/ has it).  They register themselves when loaded, which is why the
// bundle links them with --no-as-needed (cmake/runtime.cmake).
//
// A .pte has no input or output names: tensors are matched by position, in the bundle's order
// (io.json lists the names; it is the order the program was exported with).
//
// Threads: ExecuTorch's CPU thread pool (libexecutorch_threadpool, used by XNNPACK and the
// optimized kernels) is one per process, sized by default to the number of performance cores.
// The wheel ships no threadpool.h, so the two entry points used to resize it are declared below
// from libexecutorch_threadpool's exported symbols (ThreadPool::_unsafe_reset_threadpool and
// ThreadPool::get_thread_count, the same calls the Python runtime makes).  The pool is resized
// before the program is loaded, and only while no other ExecuTorch ef_model is open in the
// process: XNNPACK delegates keep the pool they were initialized with, and resizing replaces it,
// so a model opened while another is open shares the existing pool at its current size.  Open
// models that need different thread counts one after the other (close, then open) or in
// separate processes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/platform.h>

#include "backend.hpp"
#include "edgeformer.h"

// From libexecutorch_threadpool.so (see the note above); only these two members are declared.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace ef {
namespace {

namespace et = ::executorch;
using et::extension::Module;
using EtError = et::runtime::Error;
using et::runtime::EValue;

std::string et_error(EtError e) {
  char code[16];
  std::snprintf(code, sizeof code, "0x%x", static_cast<unsigned>(e));
  return std::string(et::runtime::to_string(e)) + " (" + code + ")";
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// ExecuTorch's default log sink prints every Info line (CPU probing, thread pool resets) to
// stderr on each ef_open.  The bundle keeps errors and drops Info/Debug, unless the environment
// sets EF_EXECUTORCH_LOG=1.  Registered once, through ExecuTorch's own PAL hook.
void emit_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
              const char* message, size_t length) {
  if (level == kDebug || level == kInfo) {
    static const bool verbose = [] {
      const char* v = std::getenv("EF_EXECUTORCH_LOG");
      return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
    }();
    if (!verbose) return;
  }
  std::fprintf(stderr, "executorch %c %s:%zu] %.*s\n", static_cast<char>(level), filename ? filename : "?", line,
               static_cast<int>(length), message);
}

void quiet_logs() {
  static const bool registered =
      et::runtime::register_pal(et::runtime::PalImpl::create(emit_log, __FILE__));
  (void)registered;
}

// ExecuTorch models alive in this process (guarded by live_mutex()).
std::mutex& live_mutex() {
  static std::mutex m;
  return m;
}
int live_models = 0;

// Counts one open model from construction to destruction (declared first: destroyed last).
struct LiveToken {
  LiveToken() = default;
  LiveToken(const LiveToken&) = delete;
  LiveToken& operator=(const LiveToken&) = delete;
  ~LiveToken() {
    std::lock_guard<std::mutex> lock(live_mutex());
    --live_models;
  }
};

// Call with live_mutex() held.
void set_threads(int threads) {
  if (live_models > 0) return;  // the pool is in use by an open model: keep it (see above)
  auto* pool = et::extension::threadpool::get_threadpool();
  if (pool == nullptr) return;  // no pool (cpuinfo failed): ExecuTorch runs single-threaded
  if (pool->get_thread_count() == static_cast<size_t>(threads)) return;
  if (!pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads)))
    throw ef::Error(EF_ERR_RUNTIME, "ExecuTorch could not resize its thread pool to " + std::to_string(threads));
}

class ExecuTorchBackend : public Backend {
 public:
  ExecuTorchBackend(const std::string& model_path, int threads, const BundleInfo& info) : info_(info) {
    if (!std::ifstream(model_path, std::ios::binary))
      throw ef::Error(EF_ERR_IO, "cannot read the ExecuTorch program " + model_path);
    quiet_logs();
    {
      std::lock_guard<std::mutex> lock(live_mutex());
      set_threads(threads);
      live_ = std::make_unique<LiveToken>();
      ++live_models;
    }
    module_ = std::make_unique<Module>(model_path, Module::LoadMode::File);
    EtError err = module_->load();
    if (err != EtError::Ok)
      throw ef::Error(EF_ERR_RUNTIME, "ExecuTorch could not load " + model_path + ": " + et_error(err));
    err = module_->load_method("forward");
    if (err != EtError::Ok)
      throw ef::Error(EF_ERR_RUNTIME, "ExecuTorch could not load method forward of " + model_path + ": " +
                                          et_error(err) + " (a kernel or delegate the program needs is missing?)");
    auto meta = module_->method_meta("forward");
    if (!meta.ok())
      throw ef::Error(EF_ERR_RUNTIME, "ExecuTorch has no metadata for forward: " + et_error(meta.error()));
    if (meta->num_inputs() != info.inputs.size() || meta->num_outputs() != info.outputs.size())
      throw ef::Error(EF_ERR_RUNTIME, "the ExecuTorch program takes " + std::to_string(meta->num_inputs()) +
                                          " input(s) and returns " + std::to_string(meta->num_outputs()) +
                                          "; the bundle expects " + std::to_string(info.inputs.size()) + " and " +
                                          std::to_string(info.outputs.size()));
    // One float buffer per input, owned here and wrapped once: run() copies the caller's data in.
    for (size_t i = 0; i < info.inputs.size(); ++i) {
      const TensorInfo& spec = info.inputs[i];
      auto tmeta = meta->input_tensor_meta(i);
      if (!tmeta.ok())
        throw ef::Error(EF_ERR_RUNTIME, "input " + std::to_string(i) + " (" + spec.name +
                                            ") of the ExecuTorch program is not a tensor");
      if (tmeta->scalar_type() != et::aten::ScalarType::Float)
        throw ef::Error(EF_ERR_RUNTIME, "input " + spec.name + " of the ExecuTorch program is not float32");
      auto sizes = tmeta->sizes();
      bool same = sizes.size() == spec.shape.size();
      for (size_t d = 0; same && d < sizes.size(); ++d) same = sizes[d] == spec.shape[d];
      if (!same)
        throw ef::Error(EF_ERR_RUNTIME, "input " + spec.name + " of the ExecuTorch program does not have shape " +
                                            shape_str(spec.shape));
      in_data_.emplace_back(spec.size());
      std::vector<et::aten::SizesType> dims(spec.shape.begin(), spec.shape.end());
      in_tensors_.push_back(et::extension::from_blob(in_data_.back().data(), std::move(dims),
                                                     et::aten::ScalarType::Float));
    }
  }

  void run(const float* const* inputs, float* const* outputs) override {
    std::vector<EValue> args;
    args.reserve(info_.inputs.size());
    for (size_t i = 0; i < info_.inputs.size(); ++i) {
      std::memcpy(in_data_[i].data(), inputs[i], info_.inputs[i].size() * sizeof(float));
      args.emplace_back(*in_tensors_[i]);
    }
    auto result = module_->execute("forward", args);
    if (!result.ok()) throw ef::Error(EF_ERR_RUNTIME, "ExecuTorch forward failed: " + et_error(result.error()));
    const std::vector<EValue>& outs = *result;
    if (outs.size() != info_.outputs.size())
      throw ef::Error(EF_ERR_RUNTIME, "the ExecuTorch program returned " + std::to_string(outs.size()) +
                                          " outputs, the bundle expects " + std::to_string(info_.outputs.size()));
    for (size_t i = 0; i < outs.size(); ++i) {
      const TensorInfo& spec = info_.outputs[i];
      if (!outs[i].isTensor()) throw ef::Error(EF_ERR_RUNTIME, "output " + spec.name + " is not a tensor");
      const et::aten::Tensor& t = outs[i].toTensor();
      if (t.scalar_type() != et::aten::ScalarType::Float)
        throw ef::Error(EF_ERR_RUNTIME, "output " + spec.name + " is not float32");
      if (static_cast<size_t>(t.numel()) != spec.size())
        throw ef::Error(EF_ERR_RUNTIME, "output " + spec.name + " has " + std::to_string(t.numel()) +
                                            " elements, the bundle expects " + std::to_string(spec.size()));
      std::memcpy(outputs[i], t.const_data_ptr<float>(), spec.size() * sizeof(float));
    }
  }

  std::string version() const override {
#ifdef EF_RUNTIME_VERSION
    return std::string("executorch ") + EF_RUNTIME_VERSION;
#else
    return "executorch";  // the headers carry no version; cmake/runtime.cmake passes it
#endif
  }

 private:
  std::unique_ptr<LiveToken> live_;  // first: destroyed after the program and its delegates
  BundleInfo info_;
  std::unique_ptr<Module> module_;
  std::vector<std::vector<float>> in_data_;
  std::vector<et::extension::TensorPtr> in_tensors_;
};

}  // namespace

std::unique_ptr<Backend> open_backend(const std::string& model_path, int threads, const BundleInfo& info) {
  if (threads < 1) throw ef::Error(EF_ERR_ARGUMENT, "threads must be >= 1, got " + std::to_string(threads));
  return std::make_unique<ExecuTorchBackend>(model_path, threads, info);
}

}  // namespace ef
