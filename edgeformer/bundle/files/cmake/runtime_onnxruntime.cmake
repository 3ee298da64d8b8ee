# ONNX Runtime: headers from the official release (third_party/, fetched by edgeformer bundle),
# the library from the onnxruntime wheel for this platform, under its SONAME.
set(EF_RUNTIME_INCLUDE_DIRS ${CMAKE_CURRENT_SOURCE_DIR}/third_party/onnxruntime/include)
set(EF_RUNTIME_LIBRARIES ${CMAKE_CURRENT_SOURCE_DIR}/lib/libonnxruntime.so.1)
set(EF_RUNTIME_DEFINITIONS "")
set(EF_RUNTIME_LINK_OPTIONS "")
