# Apache TVM: the tvm::ffi headers (apache-tvm-ffi wheel) and libtvm_runtime + libtvm_ffi (the
# apache-tvm and apache-tvm-ffi wheels for this platform), copied into third_party/ and lib/ by
# edgeformer bundle; nothing is looked up outside this folder.  libtvm_runtime registers the
# Relax VM loader model/model.so needs but is not called by name, so it is linked with
# --no-as-needed (EF_RUNTIME_LINK_OPTIONS, before the runtime libraries).  model.so takes its
# TVMFFI* symbols from libtvm_ffi, already loaded by the library.
set(EF_RUNTIME_INCLUDE_DIRS ${CMAKE_CURRENT_SOURCE_DIR}/third_party/tvm/include)
set(EF_RUNTIME_LIBRARIES ${CMAKE_CURRENT_SOURCE_DIR}/lib/libtvm_runtime.so ${CMAKE_CURRENT_SOURCE_DIR}/lib/libtvm_ffi.so)
foreach(_ef_path ${EF_RUNTIME_LIBRARIES})
  if(NOT EXISTS ${_ef_path})
    message(FATAL_ERROR "no ${_ef_path} in this bundle: run edgeformer bundle again")
  endif()
endforeach()
set(EF_RUNTIME_DEFINITIONS "")
set(EF_RUNTIME_LINK_OPTIONS "-Wl,--no-as-needed")
