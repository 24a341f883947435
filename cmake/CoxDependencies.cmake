# Finds Coxswain's dependencies. A missing required one stops configuration
# with the Debian package that provides it.

find_package(Threads REQUIRED)

# libtorch: Debian's libtorch-dev (CPU) or the one inside a pip-installed torch
# (pass -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')).
# A CUDA libtorch's CMake config rewrites the CUDA flags (code for every
# architecture it was built for, some of which a newer nvcc no longer
# knows); our kernels keep their own.
set(cox_saved_cuda_flags "${CMAKE_CUDA_FLAGS}")
set(cox_saved_cuda_archs "${CMAKE_CUDA_ARCHITECTURES}")
find_package(Torch QUIET)
set(CMAKE_CUDA_FLAGS "${cox_saved_cuda_flags}")
if(cox_saved_cuda_archs)
  set(CMAKE_CUDA_ARCHITECTURES "${cox_saved_cuda_archs}")
endif()
if(NOT Torch_FOUND)
  message(FATAL_ERROR "libtorch not found: install Debian's libtorch-dev "
                      "(apt-get install libtorch-dev), or point CMAKE_PREFIX_PATH at a libtorch "
                      "(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)').")
endif()

# A CUDA libtorch (the pip one) lists its CUDA libraries here.
if(TORCH_CUDA_LIBRARIES)
  set(COX_TORCH_CUDA ON)
else()
  set(COX_TORCH_CUDA OFF)
endif()

find_package(fmt QUIET)
if(NOT fmt_FOUND)
  # Header-only fallback: a folder holding include/fmt (for machines without the package).
  find_path(COX_FMT_INCLUDE_DIR fmt/format.h)
  if(NOT COX_FMT_INCLUDE_DIR)
    message(FATAL_ERROR "fmt not found: install Debian's libfmt-dev (apt-get install libfmt-dev).")
  endif()
  add_library(fmt::fmt-header-only INTERFACE IMPORTED)
  set_target_properties(fmt::fmt-header-only PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${COX_FMT_INCLUDE_DIR}"
    INTERFACE_COMPILE_DEFINITIONS FMT_HEADER_ONLY=1)
endif()

# Standalone Asio is header-only and has no CMake package.
find_path(COX_ASIO_INCLUDE_DIR asio.hpp)
if(NOT COX_ASIO_INCLUDE_DIR)
  message(FATAL_ERROR "standalone Asio not found: install Debian's libasio-dev (apt-get install libasio-dev).")
endif()
add_library(cox_asio INTERFACE)
target_include_directories(cox_asio SYSTEM INTERFACE "${COX_ASIO_INCLUDE_DIR}")
target_compile_definitions(cox_asio INTERFACE ASIO_STANDALONE ASIO_NO_DEPRECATED)
target_link_libraries(cox_asio INTERFACE Threads::Threads)

find_package(OpenSSL QUIET COMPONENTS Crypto)
if(NOT OpenSSL_FOUND)
  message(FATAL_ERROR "OpenSSL's libcrypto not found: install Debian's libssl-dev (apt-get install libssl-dev).")
endif()

set(COX_HAVE_GLOO OFF)
if(COX_GLOO STREQUAL "ON")
  find_package(Gloo QUIET)
  if(NOT Gloo_FOUND)
    message(FATAL_ERROR "Gloo not found: install Debian's libgloo-dev (apt-get install libgloo-dev), "
                        "or configure with -DCOX_GLOO=OFF for a GPU-only build.")
  endif()
  set(COX_HAVE_GLOO ON)
elseif(NOT COX_GLOO STREQUAL "OFF")
  message(FATAL_ERROR "COX_GLOO must be ON or OFF, got '${COX_GLOO}'")
endif()

# CUDA toolkit and NCCL: optional unless COX_CUDA=ON.
set(COX_HAVE_CUDA OFF)
set(COX_HAVE_NCCL OFF)
if(NOT COX_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "COX_CUDA must be AUTO, ON or OFF, got '${COX_CUDA}'")
endif()
if(NOT COX_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Hopper machine code plus PTX that any newer GPU can JIT.
      set(CMAKE_CUDA_ARCHITECTURES "90;75-virtual")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(COX_HAVE_CUDA ON)
    # With a pip torch, use the NCCL it loads (its nvidia-nccl package), so
    # that one process holds one NCCL: pass -DCOX_NCCL_ROOT=<.../nvidia/nccl>.
    set(COX_NCCL_ROOT "" CACHE PATH "An NCCL installation (include/, lib/) to use before the CUDA toolkit's")
    find_path(COX_NCCL_INCLUDE_DIR nccl.h HINTS ${COX_NCCL_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
    find_library(COX_NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
                 HINTS ${COX_NCCL_ROOT}/lib ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
    if(COX_NCCL_INCLUDE_DIR AND COX_NCCL_LIBRARY)
      add_library(cox_nccl INTERFACE)
      target_include_directories(cox_nccl SYSTEM INTERFACE "${COX_NCCL_INCLUDE_DIR}")
      target_link_libraries(cox_nccl INTERFACE "${COX_NCCL_LIBRARY}")
      set(COX_HAVE_NCCL ON)
      if(COX_NCCL_ROOT)
        # libtorch_cuda needs this NCCL too: the linker must find it before
        # any other (the toolkit's) when it resolves libtorch's needs.
        get_filename_component(cox_nccl_dir "${COX_NCCL_LIBRARY}" DIRECTORY)
        add_link_options("LINKER:-rpath-link,${cox_nccl_dir}")
      endif()
    elseif(COX_CUDA STREQUAL "ON")
      message(FATAL_ERROR "NCCL not found next to the CUDA toolkit: install NCCL (Debian: libnccl-dev) "
                          "or configure with -DCOX_CUDA=OFF.")
    endif()
  elseif(COX_CUDA STREQUAL "ON")
    message(FATAL_ERROR "COX_CUDA=ON but no CUDA compiler found: install the CUDA toolkit "
                        "(nvcc in /usr/local/cuda/bin or on PATH), or configure with -DCOX_CUDA=AUTO.")
  endif()
endif()

# Header-only dependencies are used by compiling against them, never linked:
# copying their usage requirements keeps them out of the exported link
# interface of the static library.
function(cox_use_header_only target)
  foreach(dep IN LISTS ARGN)
    target_include_directories(${target} SYSTEM PRIVATE $<TARGET_PROPERTY:${dep},INTERFACE_INCLUDE_DIRECTORIES>)
    target_compile_definitions(${target} PRIVATE $<TARGET_PROPERTY:${dep},INTERFACE_COMPILE_DEFINITIONS>)
  endforeach()
endfunction()

# Embedded with add_subdirectory, the including project links cox::cox from
# its own directory, where our imported dependency targets (torch, CUDA::...)
# must be visible too.
if(NOT COX_TOP_LEVEL)
  get_directory_property(cox_imported IMPORTED_TARGETS)
  foreach(t IN LISTS cox_imported)
    get_target_property(is_global ${t} IMPORTED_GLOBAL)
    if(NOT is_global)
      set_target_properties(${t} PROPERTIES IMPORTED_GLOBAL TRUE)
    endif()
  endforeach()
endif()
