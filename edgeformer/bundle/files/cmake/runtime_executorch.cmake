# ExecuTorch: headers and libraries from the executorch wheel for this platform (copied into
# third_party/ and lib/ by edgeformer bundle; nothing is looked up outside this folder).
# lib/ holds the runtime, its thread pool, the CPU kernels and the XNNPACK delegate; the quantized
# kernels (for quantize/dequantize ops left outside the delegate; an XNNPACK int8 program has
# none when every quantized op is delegated) are linked too if they were added to lib/.
# The kernel and delegate libraries only register themselves when loaded (no symbol of theirs is
# referenced), so they are linked with --no-as-needed, which EF_RUNTIME_LINK_OPTIONS puts before
# the runtime libraries.  The definitions are the ones the wheel's executorch-config.cmake
# documents for consumers: the vendored c10 headers need C10_USING_CUSTOM_GENERATED_MACROS, the
# libraries were built with ET_EVENT_TRACER_ENABLED, and the thread pool is linked.
set(_ef_et ${CMAKE_CURRENT_SOURCE_DIR}/third_party/executorch/include)
set(EF_RUNTIME_INCLUDE_DIRS ${_ef_et} ${_ef_et}/executorch/runtime/core/portable_type/c10)
set(EF_RUNTIME_LIBRARIES)
foreach(_ef_lib executorch executorch_threadpool executorch_kernels_optimized executorch_kernels_quantized
                executorch_backend_xnnpack)
  set(_ef_path ${CMAKE_CURRENT_SOURCE_DIR}/lib/lib${_ef_lib}.so)
  if(EXISTS ${_ef_path})
    list(APPEND EF_RUNTIME_LIBRARIES ${_ef_path})
  elseif(NOT _ef_lib STREQUAL "executorch_kernels_quantized")
    message(FATAL_ERROR "no lib/lib${_ef_lib}.so in this bundle: run edgeformer bundle again")
  endif()
endforeach()
set(EF_RUNTIME_DEFINITIONS C10_USING_CUSTOM_GENERATED_MACROS ET_EVENT_TRACER_ENABLED ET_USE_THREADPOOL)
set(EF_RUNTIME_LINK_OPTIONS "-Wl,--no-as-needed")
