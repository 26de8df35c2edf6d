# Third-party libraries, all from Debian packages (scripts/setup.sh installs
# them). Required ones fail the configure step with the package to install.

function(borealis_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR "${what} not found: install the Debian package '${package}' "
                        "(or run scripts/setup.sh)")
  endif()
endfunction()

find_package(Threads REQUIRED)
find_package(OpenMP)
borealis_require(OpenMP_CXX_FOUND "OpenMP" "g++")

find_package(CLI11 CONFIG QUIET)
borealis_require(CLI11_FOUND "CLI11" "libcli11-dev")
find_package(fmt CONFIG QUIET)
borealis_require(fmt_FOUND "fmt" "libfmt-dev")
find_package(spdlog CONFIG QUIET)
borealis_require(spdlog_FOUND "spdlog" "libspdlog-dev")
find_package(tomlplusplus CONFIG QUIET)
borealis_require(tomlplusplus_FOUND "toml++" "libtomlplusplus-dev")
find_package(nlohmann_json CONFIG QUIET)
borealis_require(nlohmann_json_FOUND "nlohmann-json" "nlohmann-json3-dev")

find_package(simdjson CONFIG QUIET)
borealis_require(simdjson_FOUND "simdjson" "libsimdjson-dev")
find_package(ZLIB QUIET)
borealis_require(ZLIB_FOUND "zlib" "zlib1g-dev")
find_package(zstd CONFIG QUIET)
borealis_require(zstd_FOUND "zstd" "libzstd-dev")

find_path(XXHASH_INCLUDE_DIR xxhash.h)
find_library(XXHASH_LIBRARY xxhash)
if(XXHASH_INCLUDE_DIR AND XXHASH_LIBRARY)
  set(XXHASH_FOUND TRUE)
endif()
borealis_require(XXHASH_FOUND "xxHash" "libxxhash-dev")
add_library(borealis_xxhash INTERFACE)
target_include_directories(borealis_xxhash SYSTEM INTERFACE ${XXHASH_INCLUDE_DIR})
target_link_libraries(borealis_xxhash INTERFACE ${XXHASH_LIBRARY})

find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 IMPORTED_TARGET libpcre2-8)
borealis_require(PCRE2_FOUND "PCRE2" "libpcre2-dev")
add_library(borealis_pcre2 INTERFACE)
target_link_libraries(borealis_pcre2 INTERFACE PkgConfig::PCRE2)

# cpp-httplib, Debian's compiled build (the HTTP server of `borealis serve`).
pkg_check_modules(HTTPLIB IMPORTED_TARGET cpp-httplib)
borealis_require(HTTPLIB_FOUND "cpp-httplib" "libcpp-httplib-dev")
add_library(borealis_httplib INTERFACE)
target_link_libraries(borealis_httplib INTERFACE PkgConfig::HTTPLIB)

# OpenBLAS, the OpenMP build: it shares libgomp's thread pool with our own
# OpenMP loops, so BLAS threads and kernel threads never oversubscribe.
set(_ob_arch ${CMAKE_LIBRARY_ARCHITECTURE})
find_library(OPENBLAS_LIBRARY openblas
  HINTS /usr/lib/${_ob_arch}/openblas-openmp NO_DEFAULT_PATH)
find_library(OPENBLAS_LIBRARY openblas)
find_path(OPENBLAS_INCLUDE_DIR cblas.h
  HINTS /usr/include/${_ob_arch}/openblas-openmp NO_DEFAULT_PATH)
find_path(OPENBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas)
if(OPENBLAS_LIBRARY AND OPENBLAS_INCLUDE_DIR)
  set(OPENBLAS_FOUND TRUE)
endif()
borealis_require(OPENBLAS_FOUND "OpenBLAS" "libopenblas-openmp-dev")
add_library(borealis_openblas INTERFACE)
target_include_directories(borealis_openblas SYSTEM INTERFACE ${OPENBLAS_INCLUDE_DIR})
target_link_libraries(borealis_openblas INTERFACE ${OPENBLAS_LIBRARY} OpenMP::OpenMP_CXX)
message(STATUS "Borealis: OpenBLAS ${OPENBLAS_LIBRARY}")

find_package(MPI COMPONENTS C)
borealis_require(MPI_C_FOUND "MPI" "libopenmpi-dev")

set(BOREALIS_HAVE_CUDA OFF)
if(NOT BOREALIS_CUDA STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    set(BOREALIS_HAVE_CUDA ON)
    message(STATUS "Borealis: CUDA runtime ${CUDAToolkit_VERSION}")
  elseif(BOREALIS_CUDA STREQUAL "ON")
    message(FATAL_ERROR "BOREALIS_CUDA=ON but the CUDA toolkit was not found (set CUDAToolkit_ROOT)")
  endif()
endif()

# The CUDA backend's kernels (src/kernels/cuda/*.cu), compiled by nvcc for
# CMAKE_CUDA_ARCHITECTURES (default 90: H100 and H200). Built whenever the
# toolkit is found, so the code compiles on every CI run even without a GPU;
# the sanitizer preset leaves them out (nvcc does not take the sanitizer
# flags, and its tests need a device, which CI does not have).
option(BOREALIS_CUDA_KERNELS "Build the CUDA backend when the CUDA toolkit is found" ON)
set(BOREALIS_HAVE_CUDA_KERNELS OFF)
if(BOREALIS_HAVE_CUDA AND BOREALIS_CUDA_KERNELS)
  if(NOT CMAKE_CUDA_COMPILER AND CUDAToolkit_NVCC_EXECUTABLE)
    set(CMAKE_CUDA_COMPILER ${CUDAToolkit_NVCC_EXECUTABLE})
  endif()
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90)
  endif()
  enable_language(CUDA)
  set(BOREALIS_HAVE_CUDA_KERNELS ON)
  message(STATUS "Borealis: CUDA backend for sm_${CMAKE_CUDA_ARCHITECTURES}")
endif()

# NCCL, for data parallelism between GPUs (src/dist/nccl_communicator.h):
# its header at build time; the library is loaded when a run needs it (from
# the library path, else from where it was found here), so the binary does
# not depend on it.
set(BOREALIS_HAVE_NCCL OFF)
if(BOREALIS_HAVE_CUDA_KERNELS)
  find_path(BOREALIS_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(BOREALIS_NCCL_LIBRARY_PATH NAMES libnccl.so.2 nccl
               HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib
                     ${CUDAToolkit_TARGET_DIR}/lib)
  if(BOREALIS_NCCL_INCLUDE_DIR)
    set(BOREALIS_HAVE_NCCL ON)
    message(STATUS "Borealis: NCCL header in ${BOREALIS_NCCL_INCLUDE_DIR}, library "
                   "${BOREALIS_NCCL_LIBRARY_PATH}")
  else()
    message(STATUS "Borealis: no NCCL header: no data parallelism between GPUs")
  endif()
endif()
