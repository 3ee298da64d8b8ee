// backend.hpp: what one runtime implements for edgeformer.cpp (the C API).  Internal to the
// bundle's library; apps include only edgeformer.h.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ef {

// A failure with the C API status it maps to (edgeformer.cpp catches it at the C boundary).
struct Error : std::runtime_error {
  int status;  // an ef_status value
  Error(int status, const std::string& what) : std::runtime_error(what), status(status) {}
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  size_t size() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
};

// What the bundle knows about its model (generated into bundle_info.cpp from the manifest).
struct BundleInfo {
  std::string runtime;     // "onnxruntime", "openvino", "executorch", "tvm"
  std::string model_file;  // relative to the bundle folder, e.g. "model/model.ort"
  int default_threads;     // used when ef_open gets 0
  std::string precision;   // the profile's precision hint ("fp32", "bf16", ...), for OpenVINO
  std::vector<TensorInfo> inputs, outputs;
  // Streaming (compile --streaming): indices into inputs/outputs; frame_input < 0 if not streaming.
  int frame_input = -1, flush_input = -1, logits_output = -1;
  int delay_frames = 0;
  struct State {
    int input, output;  // this state's input and output indices
    float initial;      // every element starts at this value
  };
  std::vector<State> states;
};

const BundleInfo& bundle_info();

// One runtime session.  run() reads info.inputs.size() buffers of inputs[i].size() floats and
// writes info.outputs.size() buffers of outputs[i].size() floats, in the bundle's order (match
// by name where the runtime has names).  Throws ef::Error on failure; never exits.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual void run(const float* const* inputs, float* const* outputs) = 0;
  virtual std::string version() const = 0;  // e.g. "onnxruntime 1.31.1"
};

// Implemented by exactly one backend_<runtime>.cpp in each bundle.  model_path is absolute or
// relative to the working folder; threads >= 1.
std::unique_ptr<Backend> open_backend(const std::string& model_path, int threads, const BundleInfo& info);

}  // namespace ef
