# OpenVINO: headers and libraries from the openvino wheel for this platform (copied into
# third_party/ and lib/ by edgeformer bundle; nothing is looked up outside this folder).
# lib/ holds libopenvino (the only library linked), the CPU plugin (intel_cpu on x86-64,
# arm_cpu on aarch64) and the IR frontend, which libopenvino finds next to itself without a
# plugins.xml, and libtbb.
set(EF_RUNTIME_INCLUDE_DIRS ${CMAKE_CURRENT_SOURCE_DIR}/third_party/openvino/include)
file(GLOB EF_RUNTIME_LIBRARIES ${CMAKE_CURRENT_SOURCE_DIR}/lib/libopenvino.so.*)
if(NOT EF_RUNTIME_LIBRARIES)
  message(FATAL_ERROR "no lib/libopenvino.so.* in this bundle: run edgeformer bundle again")
endif()
list(GET EF_RUNTIME_LIBRARIES 0 EF_RUNTIME_LIBRARIES)
set(EF_RUNTIME_DEFINITIONS "")
set(EF_RUNTIME_LINK_OPTIONS "")
