// backend_tvm.cpp: ef::Backend on Apache TVM's Relax VM, through the tvm::ffi C++ API only.
//
// The model is model/model.so, the Relax executable edgeformer compiled (export_library): its
// kernels are compiled for one CPU (the profile's target), and its weights are bound inside.
// It resolves its TVMFFI* symbols from libtvm_ffi, and its "relax.VMExecutable" loader lives in
// libtvm_runtime, which the bundle links with --no-as-needed (nothing here calls it by name).
//
// Sequence: Module::LoadFromFile -> vm_load_executable -> vm_initialization(CPU, pooled
// allocator; host CPU, pooled) -> "main".  main takes the inputs in the bundle's order and returns
// a tensor or a tuple (possibly nested) of tensors: the outputs in order, flattened depth-first,
// as edgeformer's Python runner reads them.
//
// Threads: TVM keeps one runtime thread pool per calling thread.  run() sizes the calling thread's
// pool with runtime.config_threadpool(1 = big cores, threads), as the Python runner does, when
// that thread last used another count.  The pool's largest size is fixed when TVM creates it,
// from TVM_NUM_THREADS: open_backend sets that variable (only if the app has not) to
// max(threads, hardware threads) first; see size_worker_set.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include "backend.hpp"
#include "edgeformer.h"

namespace ef {
namespace {

namespace ffi = ::tvm::ffi;

constexpr int kPooledAllocator = 2;  // relax VM AllocatorType::kPooled
constexpr size_t kAlignment = 64;    // what TVM's own CPU allocator uses

// CPU storage for the input tensors, aligned as TVM kernels expect.
struct AlignedCpuAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = ffi::GetDataSize(*t);
    bytes = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    t->data = std::aligned_alloc(kAlignment, bytes ? bytes : kAlignment);
    if (t->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

bool is_f32(DLDataType t) { return t.code == kDLFloat && t.bits == 32 && t.lanes == 1; }

// A VM result (tensor, or nested tuples of tensors) -> its tensors, depth-first.
void flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.as<ffi::Tensor>()) {
    out->push_back(*t);
    return;
  }
  if (auto items = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *items) flatten(item, out);
    return;
  }
  throw Error(EF_ERR_RUNTIME, "the TVM model returned a " + value.GetTypeKey() + ", not tensors");
}

// TVM sizes a thread pool's worker set once, when the pool is created, from TVM_NUM_THREADS
// (else the core count, halved on x86 for hyper-threading: one thread on a 2-vCPU VM), and
// config_threadpool can only use fewer workers than that.  So, unless the app set it, the bundle
// sets TVM_NUM_THREADS to max(threads, hardware threads) before TVM creates any pool.
void size_worker_set(int threads) {
  if (std::getenv("TVM_NUM_THREADS") != nullptr) return;
  int n = std::max(threads, static_cast<int>(std::thread::hardware_concurrency()));
  setenv("TVM_NUM_THREADS", std::to_string(n).c_str(), 0);
}

// TVM's pool is per calling thread: configure the calling thread's pool to `threads` workers
// (mode 1 = big cores, as edgeformer's Python runner does) the first time this thread runs a
// model with that count.
void use_threads(int threads) {
  thread_local int configured = 0;
  if (configured == threads) return;
  if (auto config = ffi::Function::GetGlobal("runtime.config_threadpool")) (*config)(1, threads);
  configured = threads;
}

class TvmBackend : public Backend {
 public:
  TvmBackend(const std::string& model_path, int threads, const BundleInfo& info) : info_(info), threads_(threads) {
    if (!std::ifstream(model_path, std::ios::binary)) throw Error(EF_ERR_IO, "cannot read the TVM model " + model_path);
    size_worker_set(threads);
    try {
      ffi::Module lib = ffi::Module::LoadFromFile(model_path);
      auto load = lib->GetFunction("vm_load_executable");
      if (!load) throw Error(EF_ERR_RUNTIME, model_path + " is not a Relax VM executable (no vm_load_executable)");
      vm_ = (*load)().cast<ffi::Module>();
      auto init = vm_->GetFunction("vm_initialization");
      if (!init) throw Error(EF_ERR_RUNTIME, "the TVM VM has no vm_initialization");
      (*init)(static_cast<int>(kDLCPU), 0, kPooledAllocator, static_cast<int>(kDLCPU), 0, kPooledAllocator);
      auto main = vm_->GetFunction("main");
      if (!main) throw Error(EF_ERR_RUNTIME, "the TVM model has no function main");
      main_ = *main;
      const DLDevice cpu{kDLCPU, 0};
      const DLDataType f32{kDLFloat, 32, 1};
      for (const TensorInfo& spec : info.inputs)
        inputs_.push_back(ffi::Tensor::FromNDAlloc(AlignedCpuAlloc(), ffi::ShapeView(spec.shape.data(), spec.shape.size()),
                                                   f32, cpu));
    } catch (const Error&) {
      throw;
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(EF_ERR_RUNTIME, "TVM could not load " + model_path + ": " + e.what());
    }
  }

  void run(const float* const* inputs, float* const* outputs) override {
    std::vector<ffi::Tensor> outs;
    try {
      use_threads(threads_);
      std::vector<ffi::AnyView> args;
      args.reserve(inputs_.size());
      for (size_t i = 0; i < inputs_.size(); ++i) {
        std::memcpy(inputs_[i].data_ptr(), inputs[i], info_.inputs[i].size() * sizeof(float));
        args.emplace_back(inputs_[i]);
      }
      ffi::Any result;
      main_.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
      flatten(result, &outs);
    } catch (const Error&) {
      throw;
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(EF_ERR_RUNTIME, std::string("TVM inference failed: ") + e.what());
    }
    if (outs.size() != info_.outputs.size())
      throw Error(EF_ERR_RUNTIME, "the TVM model returned " + std::to_string(outs.size()) +
                                      " tensors, the bundle expects " + std::to_string(info_.outputs.size()));
    for (size_t i = 0; i < outs.size(); ++i) {
      const TensorInfo& spec = info_.outputs[i];
      const ffi::Tensor& t = outs[i];
      if (!is_f32(t.dtype())) throw Error(EF_ERR_RUNTIME, "output " + spec.name + " is not float32");
      if (t.device().device_type != kDLCPU) throw Error(EF_ERR_RUNTIME, "output " + spec.name + " is not on the CPU");
      if (!t.IsContiguous()) throw Error(EF_ERR_RUNTIME, "output " + spec.name + " is not contiguous");
      if (static_cast<size_t>(t.numel()) != spec.size())
        throw Error(EF_ERR_RUNTIME, "output " + spec.name + " has " + std::to_string(t.numel()) +
                                        " elements, the bundle expects " + std::to_string(spec.size()));
      const char* data = static_cast<const char*>(t.data_ptr()) + t.GetDLTensorPtr()->byte_offset;
      std::memcpy(outputs[i], data, spec.size() * sizeof(float));
    }
  }

  std::string version() const override {
#ifdef EF_RUNTIME_VERSION
    return std::string("tvm ") + EF_RUNTIME_VERSION;
#else
    return "tvm";  // the tvm::ffi headers carry no TVM version; cmake/runtime.cmake passes it
#endif
  }

 private:
  BundleInfo info_;
  int threads_;
  ffi::Module vm_{ffi::UnsafeInit()};
  ffi::Function main_;
  std::vector<ffi::Tensor> inputs_;
};

}  // namespace

std::unique_ptr<Backend> open_backend(const std::string& model_path, int threads, const BundleInfo& info) {
  if (threads < 1) throw Error(EF_ERR_ARGUMENT, "threads must be >= 1, got " + std::to_string(threads));
  return std::make_unique<TvmBackend>(model_path, threads, info);
}

}  // namespace ef
