// backend_openvino.cpp: ef::Backend on the OpenVINO C++ runtime (CPU device).
//
// The model is model/model.xml + model/model.bin (OpenVINO IR; the bundle may name either file).  OpenVINO finds its CPU plugin
// next to libopenvino.so (lib/ of the bundle) without a plugins.xml, and reads the IR through
// libopenvino_ir_frontend.  Compile settings follow the profile, as the Python runner does:
//   - INFERENCE_NUM_THREADS = threads;
//   - PERFORMANCE_HINT = LATENCY (one stream: one synchronous request per ef_model);
//   - INFERENCE_PRECISION_HINT from info.precision: fp32 (and int8, for the ops left in float)
//     -> f32, bf16 -> bf16, fp16 -> f16.  This matters: the CPU plugin's default on CPUs with
//     AVX512-BF16/AMX is bf16, which would not reproduce an fp32 artifact's numbers.
#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <openvino/openvino.hpp>

#include "backend.hpp"
#include "edgeformer.h"

namespace ef {
namespace {

bool readable(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return static_cast<bool>(f);
}

bool ends_with(const std::string& s, const char* tail) {
  size_t n = std::strlen(tail);
  return s.size() >= n && s.compare(s.size() - n, n, tail) == 0;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// The IR's port with this name (any of its tensor names), or -1.
template <typename Ports>
int find_port(const Ports& ports, const std::string& name) {
  for (size_t i = 0; i < ports.size(); ++i) {
    const auto& names = ports[i].get_names();
    if (names.count(name)) return static_cast<int>(i);
  }
  return -1;
}

// Ports in the bundle's order: by name when every name is found, else by position.
template <typename Ports>
std::vector<size_t> port_order(const Ports& ports, const std::vector<TensorInfo>& specs, const char* what) {
  if (ports.size() != specs.size())
    throw Error(EF_ERR_RUNTIME, std::string("the OpenVINO model has ") + std::to_string(ports.size()) + " " +
                                    what + "s, the bundle expects " + std::to_string(specs.size()));
  std::vector<size_t> order(specs.size());
  bool by_name = true;
  for (size_t i = 0; i < specs.size() && by_name; ++i) {
    int p = find_port(ports, specs[i].name);
    if (p < 0) by_name = false;
    else order[i] = static_cast<size_t>(p);
  }
  if (!by_name)
    for (size_t i = 0; i < specs.size(); ++i) order[i] = i;
  return order;
}

ov::element::Type precision_hint(const std::string& precision) {
  if (precision == "bf16") return ov::element::bf16;
  if (precision == "fp16") return ov::element::f16;
  return ov::element::f32;  // fp32; int8: the ops kept in float run in f32 (as compile did)
}

class OpenVinoBackend : public Backend {
 public:
  OpenVinoBackend(const std::string& model_path, int threads, const BundleInfo& info) : info_(info) {
    // An IR is two files, X.xml (the graph) and X.bin (the weights): model_path may name either.
    std::string xml = model_path, weights = model_path;
    if (ends_with(model_path, ".bin")) xml.replace(xml.size() - 4, 4, ".xml");
    else if (ends_with(model_path, ".xml")) weights.replace(weights.size() - 4, 4, ".bin");
    if (!readable(xml)) throw Error(EF_ERR_IO, "cannot read the OpenVINO model " + xml);
    if (weights != xml && !readable(weights)) throw Error(EF_ERR_IO, "cannot read the OpenVINO weights " + weights);
    try {
      std::shared_ptr<ov::Model> model = core_.read_model(xml);
      compiled_ = core_.compile_model(model, "CPU", ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
                                      ov::hint::inference_precision(precision_hint(info.precision)),
                                      ov::inference_num_threads(threads));
      request_ = compiled_.create_infer_request();
    } catch (const std::exception& e) {
      throw Error(EF_ERR_RUNTIME, std::string("OpenVINO could not load ") + xml + ": " + e.what());
    }
    const auto inputs = compiled_.inputs();
    const auto outputs = compiled_.outputs();
    in_order_ = port_order(inputs, info.inputs, "input");
    out_order_ = port_order(outputs, info.outputs, "output");
    for (size_t i = 0; i < info.inputs.size(); ++i) {
      const ov::Output<const ov::Node>& port = inputs[in_order_[i]];
      if (port.get_element_type() != ov::element::f32)
        throw Error(EF_ERR_RUNTIME, "input " + info.inputs[i].name + " of the OpenVINO model is " +
                                        port.get_element_type().get_type_name() + ", not f32");
      if (port.get_partial_shape().is_static() && port.get_shape().size() != info.inputs[i].shape.size())
        throw Error(EF_ERR_RUNTIME, "input " + info.inputs[i].name + " of the OpenVINO model has rank " +
                                        std::to_string(port.get_shape().size()) + ", the bundle says " +
                                        shape_str(info.inputs[i].shape));
      ov::Shape shape(info.inputs[i].shape.begin(), info.inputs[i].shape.end());
      // One input tensor per port, owned by the backend: run() copies the caller's buffer in, so
      // the caller's const buffer is never handed to OpenVINO as writable memory.
      ov::Tensor tensor(ov::element::f32, shape);
      request_.set_tensor(port, tensor);
      in_tensors_.push_back(tensor);
    }
  }

  void run(const float* const* inputs, float* const* outputs) override {
    try {
      for (size_t i = 0; i < info_.inputs.size(); ++i)
        std::memcpy(in_tensors_[i].data<float>(), inputs[i], info_.inputs[i].size() * sizeof(float));
      request_.infer();
      const auto ports = compiled_.outputs();
      for (size_t i = 0; i < info_.outputs.size(); ++i) {
        const ov::Tensor out = request_.get_tensor(ports[out_order_[i]]);
        if (out.get_element_type() != ov::element::f32)
          throw Error(EF_ERR_RUNTIME, "output " + info_.outputs[i].name + " is " +
                                          out.get_element_type().get_type_name() + ", not f32");
        if (out.get_size() != info_.outputs[i].size())
          throw Error(EF_ERR_RUNTIME, "output " + info_.outputs[i].name + " has " + std::to_string(out.get_size()) +
                                          " elements, the bundle expects " + std::to_string(info_.outputs[i].size()));
        std::memcpy(outputs[i], out.data<const float>(), out.get_size() * sizeof(float));
      }
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(EF_ERR_RUNTIME, std::string("OpenVINO inference failed: ") + e.what());
    }
  }

  std::string version() const override {
    // buildNumber is e.g. "2026.4.1-22982-e213a147257-releases/2026/4": keep the release part.
    std::string build = ov::get_openvino_version().buildNumber;
    size_t dash = build.find('-');
    return "openvino " + (dash == std::string::npos ? build : build.substr(0, dash));
  }

 private:
  BundleInfo info_;
  ov::Core core_;
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
  std::vector<size_t> in_order_, out_order_;
  std::vector<ov::Tensor> in_tensors_;
};

}  // namespace

std::unique_ptr<Backend> open_backend(const std::string& model_path, int threads, const BundleInfo& info) {
  if (threads < 1) throw Error(EF_ERR_ARGUMENT, "threads must be >= 1, got " + std::to_string(threads));
  return std::make_unique<OpenVinoBackend>(model_path, threads, info);
}

}  // namespace ef
