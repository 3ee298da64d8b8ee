// backend_onnxruntime.cpp: ef::Backend over ONNX Runtime's C API (onnxruntime_c_api.h).
#include <onnxruntime_c_api.h>

#include <string>
#include <vector>

#include "backend.hpp"
#include "edgeformer.h"

namespace {

const OrtApi* api() {
  static const OrtApi* a = [] {
    const OrtApiBase* base = OrtGetApiBase();
    const OrtApi* p = base ? base->GetApi(ORT_API_VERSION) : nullptr;
    if (p == nullptr)
      throw ef::Error(EF_ERR_RUNTIME, std::string("this ONNX Runtime library does not serve API version ") +
                                          std::to_string(ORT_API_VERSION));
    return p;
  }();
  return a;
}

// Throw ef::Error for a failed OrtStatus (releasing it).
void check(OrtStatus* status, const char* what) {
  if (status == nullptr) return;
  std::string msg = std::string(what) + ": " + api()->GetErrorMessage(status);
  api()->ReleaseStatus(status);
  throw ef::Error(EF_ERR_RUNTIME, msg);
}

class OrtBackend : public ef::Backend {
 public:
  OrtBackend(const std::string& path, int threads, const ef::BundleInfo& info) : info_(info) {
    try {
      open(path, threads);
    } catch (...) {
      release();  // the destructor does not run when a constructor throws
      throw;
    }
  }

  ~OrtBackend() override { release(); }

  void open(const std::string& path, int threads) {
    const ef::BundleInfo& info = info_;
    const OrtApi* a = api();
    check(a->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "edgeformer", &env_), "CreateEnv");
    check(a->CreateSessionOptions(&opts_), "CreateSessionOptions");
    check(a->SetIntraOpNumThreads(opts_, threads), "SetIntraOpNumThreads");
    check(a->SetInterOpNumThreads(opts_, 1), "SetInterOpNumThreads");
    check(a->SetSessionExecutionMode(opts_, ORT_SEQUENTIAL), "SetSessionExecutionMode");
    // The .ort is optimized offline: loading it must not re-run (platform-specific) optimizations.
    check(a->SetSessionGraphOptimizationLevel(opts_, ORT_ENABLE_BASIC), "SetSessionGraphOptimizationLevel");
    // Spinning worker threads burn a core between calls on small devices.
    check(a->AddSessionConfigEntry(opts_, "session.intra_op.allow_spinning", "0"), "AddSessionConfigEntry");
    check(a->CreateSession(env_, path.c_str(), opts_, &session_), ("loading " + path).c_str());
    check(a->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mem_), "CreateCpuMemoryInfo");
    size_t n_in = 0, n_out = 0;
    check(a->SessionGetInputCount(session_, &n_in), "SessionGetInputCount");
    check(a->SessionGetOutputCount(session_, &n_out), "SessionGetOutputCount");
    if (n_in != info.inputs.size() || n_out != info.outputs.size())
      throw ef::Error(EF_ERR_RUNTIME, path + " has " + std::to_string(n_in) + " inputs and " + std::to_string(n_out) +
                                          " outputs; io.json lists " + std::to_string(info.inputs.size()) + " and " +
                                          std::to_string(info.outputs.size()));
    for (const auto& t : info.inputs) in_names_.push_back(t.name.c_str());
    for (const auto& t : info.outputs) out_names_.push_back(t.name.c_str());
  }

  void release() {
    const OrtApi* a = api();
    if (mem_) a->ReleaseMemoryInfo(mem_);
    if (session_) a->ReleaseSession(session_);
    if (opts_) a->ReleaseSessionOptions(opts_);
    if (env_) a->ReleaseEnv(env_);
    mem_ = nullptr;
    session_ = nullptr;
    opts_ = nullptr;
    env_ = nullptr;
  }

  void run(const float* const* inputs, float* const* outputs) override {
    const OrtApi* a = api();
    std::vector<OrtValue*> in(info_.inputs.size(), nullptr), out(info_.outputs.size(), nullptr);
    struct Release {
      const OrtApi* a;
      std::vector<OrtValue*>* v;
      ~Release() {
        for (OrtValue* x : *v)
          if (x) a->ReleaseValue(x);
      }
    } r_in{a, &in}, r_out{a, &out};
    for (size_t i = 0; i < in.size(); ++i) {
      const auto& t = info_.inputs[i];
      check(a->CreateTensorWithDataAsOrtValue(mem_, const_cast<float*>(inputs[i]), t.size() * sizeof(float),
                                              t.shape.data(), t.shape.size(), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                              &in[i]),
            "CreateTensorWithDataAsOrtValue");
    }
    for (size_t o = 0; o < out.size(); ++o) {
      const auto& t = info_.outputs[o];
      check(a->CreateTensorWithDataAsOrtValue(mem_, outputs[o], t.size() * sizeof(float), t.shape.data(),
                                              t.shape.size(), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &out[o]),
            "CreateTensorWithDataAsOrtValue");
    }
    check(a->Run(session_, nullptr, in_names_.data(), in.data(), in.size(), out_names_.data(), out.size(), out.data()),
          "Run");
  }

  std::string version() const override { return std::string("onnxruntime ") + OrtGetApiBase()->GetVersionString(); }

 private:
  const ef::BundleInfo& info_;
  OrtEnv* env_ = nullptr;
  OrtSessionOptions* opts_ = nullptr;
  OrtSession* session_ = nullptr;
  OrtMemoryInfo* mem_ = nullptr;
  std::vector<const char*> in_names_, out_names_;
};

}  // namespace

namespace ef {
std::unique_ptr<Backend> open_backend(const std::string& model_path, int threads, const BundleInfo& info) {
  return std::make_unique<OrtBackend>(model_path, threads, info);
}
}  // namespace ef
