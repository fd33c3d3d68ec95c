# CTest script (cmake -P): installs the SDK component of BUILD_DIR into a fresh temporary prefix,
# copies tests/consumer/ beside it, configures and builds that outside project against the prefix
# with find_package(diffmesh), and runs it. Inputs: BUILD_DIR, CONSUMER_DIR, GENERATOR,
# CXX_COMPILER, COMPILER_LAUNCHER (may be empty).
cmake_minimum_required(VERSION 3.22)

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  message(STATUS "${what}: ok")
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

if(DEFINED ENV{TMPDIR})
  set(tmp_root $ENV{TMPDIR})
else()
  set(tmp_root /tmp)
endif()
string(RANDOM LENGTH 10 suffix)
set(work ${tmp_root}/diffmesh_sdk_install_${suffix})
file(REMOVE_RECURSE ${work})
file(MAKE_DIRECTORY ${work})
set(prefix ${work}/prefix)

run("install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --component sdk --prefix ${prefix})

# The package must be relocatable: nothing in it may point back into the build or source tree.
file(GLOB_RECURSE cmake_files ${prefix}/*.cmake)
get_filename_component(source_dir ${CONSUMER_DIR}/../../../.. ABSOLUTE)
foreach(f ${cmake_files})
  file(READ ${f} text)
  foreach(tree ${BUILD_DIR} ${source_dir})
    string(FIND "${text}" "${tree}/" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "${f} refers to ${tree}")
    endif()
  endforeach()
endforeach()
foreach(expected include/diffmesh/client.h include/diffmesh/proto/diffmesh/v1/generation.pb.h
                 lib/cmake/diffmesh/diffmeshConfig.cmake share/diffmesh/protos/diffmesh/v1/generation.proto)
  if(NOT EXISTS ${prefix}/${expected})
    file(GLOB_RECURSE listing RELATIVE ${prefix} ${prefix}/*)
    message(FATAL_ERROR "the install lacks ${expected}; it has:\n${listing}")
  endif()
endforeach()

file(COPY ${CONSUMER_DIR}/ DESTINATION ${work}/consumer)
set(configure ${CMAKE_COMMAND} -S ${work}/consumer -B ${work}/build -G ${GENERATOR}
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
if(COMPILER_LAUNCHER)
  list(APPEND configure -DCMAKE_CXX_COMPILER_LAUNCHER=${COMPILER_LAUNCHER})
endif()
run("configure the consumer" ${configure})
run("build the consumer" ${CMAKE_COMMAND} --build ${work}/build)
# Port 1 on loopback: nothing listens there, so the client must report UNAVAILABLE.
run("run the consumer" ${work}/build/consumer 127.0.0.1:1)
message(STATUS "${last_output}")
file(REMOVE_RECURSE ${work})
