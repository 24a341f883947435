# Builds and runs tests/build/consumer against Coxswain three ways.
# Inputs: COX_SOURCE_DIR, COX_BINARY_DIR, WORK_DIR, GENERATOR, PREFIX_PATH ('|'-separated),
# COX_OPTIONS ('|'-separated -D options for the embedded build).
string(REPLACE "|" ";" COX_OPTIONS "${COX_OPTIONS}")
string(REPLACE "|" ";" prefix_path "${PREFIX_PATH}")
set(consumer_src "${COX_SOURCE_DIR}/tests/build/consumer")
file(REMOVE_RECURSE "${WORK_DIR}")

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

# The search path travels in the environment (':'-separated), since a
# ';'-list does not survive being passed through as one argument.
function(consume mode)
  string(REPLACE ";" ":" env_prefix "${prefix_path}")
  set(ENV{CMAKE_PREFIX_PATH} "${env_prefix}")
  set(dir "${WORK_DIR}/${mode}")
  run("configure consumer (${mode})" ${CMAKE_COMMAND} -S "${consumer_src}" -B "${dir}" -G "${GENERATOR}"
      -DCMAKE_BUILD_TYPE=Release ${ARGN})
  run("build consumer (${mode})" ${CMAKE_COMMAND} --build "${dir}")
  run("run consumer (${mode})" "${dir}/consumer")
  if(NOT last_output MATCHES "consumer: \\{dp=2, tp=4\\} row \\{tp=4\\} rank 6 sum 8")
    message(FATAL_ERROR "consumer (${mode}) printed: ${last_output}")
  endif()
  message(STATUS "${mode}: ${last_output}")
endfunction()

# 1. find_package from an install tree.
run("install" ${CMAKE_COMMAND} --install "${COX_BINARY_DIR}" --prefix "${WORK_DIR}/install")
list(PREPEND prefix_path "${WORK_DIR}/install")
consume(install)
list(POP_FRONT prefix_path)
# 2. find_package from the build tree.
consume(build-tree "-Dcoxswain_DIR=${COX_BINARY_DIR}")
# 3. add_subdirectory of the source tree.
# The embedded build gets the options this build was configured with.
consume(subdirectory "-DCOX_SOURCE_DIR=${COX_SOURCE_DIR}" ${COX_OPTIONS})
