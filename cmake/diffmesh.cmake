# Target helpers in the spirit of Abseil's absl_cc_library: one target per component folder,
# a namespaced alias, public headers' deps PUBLIC, warnings PRIVATE.
include(CMakeParseArguments)

set(DIFFMESH_WARNINGS -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)

# diffmesh_cc_library(NAME foo SRCS a.cc HDRS a.h DEPS diffmesh::bar [TORCH])
# Creates diffmesh_foo and the alias diffmesh::foo. TORCH marks a target that links LibTorch;
# such targets reuse one precompiled <ATen/ATen.h> to keep 2-core builds bearable.
function(diffmesh_cc_library)
  cmake_parse_arguments(ARG "TORCH" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  set(target diffmesh_${ARG_NAME})
  if(ARG_SRCS)
    add_library(${target} STATIC ${ARG_SRCS} ${ARG_HDRS})
    target_compile_options(${target} PRIVATE ${DIFFMESH_WARNINGS})
    target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(${target} PUBLIC ${ARG_DEPS})
    if(ARG_TORCH)
      diffmesh_use_torch(${target})
    endif()
  else()
    add_library(${target} INTERFACE)
    target_include_directories(${target} INTERFACE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(${target} INTERFACE ${ARG_DEPS})
  endif()
  add_library(diffmesh::${ARG_NAME} ALIAS ${target})
endfunction()

# diffmesh_cc_test(NAME foo_test SRCS foo_test.cc DEPS diffmesh::foo [TORCH] [LABELS l])
function(diffmesh_cc_test)
  cmake_parse_arguments(ARG "TORCH" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT BUILD_TESTING)
    return()
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_compile_options(${ARG_NAME} PRIVATE ${DIFFMESH_WARNINGS})
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gmock GTest::gtest_main)
  if(ARG_TORCH)
    diffmesh_use_torch(${ARG_NAME})
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  add_test(NAME ${ARG_NAME} COMMAND ${ARG_NAME})
  set_tests_properties(${ARG_NAME} PROPERTIES TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "DIFFMESH_FIXTURES=${DIFFMESH_FIXTURES};DIFFMESH_BINARY_DIR=${PROJECT_BINARY_DIR};DIFFMESH_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  if(ARG_LABELS)
    set_tests_properties(${ARG_NAME} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
endfunction()

# Links LibTorch (ATen + c10; the c10d collectives come with libtorch) and shares one
# precompiled header across every LibTorch target.
function(diffmesh_use_torch target)
  # PyTorch's wheel libtorch.so (the GPU host's LibTorch) exports its own copies of
  # std::filesystem functions. Linked after it, a call to std::filesystem::remove_all bound to
  # that copy, which jumped to a null address (the snapshot tests crashed in their tear-down on
  # the GPU host); with libstdc++ named ahead of the LibTorch libraries they run cleanly.
  target_link_libraries(${target} PUBLIC stdc++ ${TORCH_LIBRARIES} Threads::Threads)
  target_compile_options(${target} PUBLIC -pthread)
  # PyTorch's wheel bundles old google/protobuf headers in its include folder; the project's
  # protobuf must win where both are visible.
  if(Protobuf_INCLUDE_DIRS)
    target_include_directories(${target} SYSTEM BEFORE PUBLIC ${Protobuf_INCLUDE_DIRS})
  endif()
  target_include_directories(${target} SYSTEM PUBLIC ${TORCH_INCLUDE_DIRS})
  if(DIFFMESH_PCH AND TARGET diffmesh_aten_pch)
    # Executables compile with -fPIE, libraries with -fPIC: a PCH serves only one of them.
    get_target_property(type ${target} TYPE)
    if(type STREQUAL "EXECUTABLE")
      target_precompile_headers(${target} REUSE_FROM diffmesh_aten_pch_exe)
    else()
      target_precompile_headers(${target} REUSE_FROM diffmesh_aten_pch)
    endif()
  endif()
endfunction()

# diffmesh_proto_library(NAME foo ROOT dir PROTOS a.proto b.proto): generated messages and gRPC
# stubs of PROTOS (paths relative to ROOT, which is also the import root) as diffmesh::foo.
function(diffmesh_proto_library)
  cmake_parse_arguments(ARG "" "NAME;ROOT" "PROTOS" ${ARGN})
  find_program(GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)
  set(out ${CMAKE_CURRENT_BINARY_DIR}/${ARG_NAME}_gen)
  set(srcs)
  foreach(proto ${ARG_PROTOS})
    string(REGEX REPLACE "\\.proto$" "" stem ${proto})
    set(gen ${out}/${stem}.pb.cc ${out}/${stem}.pb.h ${out}/${stem}.grpc.pb.cc ${out}/${stem}.grpc.pb.h)
    add_custom_command(
      OUTPUT ${gen}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${out}
      COMMAND protobuf::protoc --proto_path=${ARG_ROOT} --cpp_out=${out} --grpc_out=${out}
              --plugin=protoc-gen-grpc=${GRPC_CPP_PLUGIN} ${ARG_ROOT}/${proto}
      DEPENDS ${ARG_ROOT}/${proto} protobuf::protoc
      COMMENT "protoc ${proto}")
    list(APPEND srcs ${gen})
  endforeach()
  add_library(diffmesh_${ARG_NAME} STATIC ${srcs})
  target_include_directories(diffmesh_${ARG_NAME} PUBLIC ${out})
  target_link_libraries(diffmesh_${ARG_NAME} PUBLIC protobuf::libprotobuf gRPC::grpc++)
  add_library(diffmesh::${ARG_NAME} ALIAS diffmesh_${ARG_NAME})
endfunction()
