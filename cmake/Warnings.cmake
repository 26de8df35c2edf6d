# Compiler flags shared by every Borealis target: warnings are errors,
# optional native SIMD and sanitizers. Applied through the interface target
# borealis_flags so third-party code is not affected.
add_library(borealis_flags INTERFACE)
# Host compiler flags only: CUDA sources (kernels/cuda/*.cu) get nvcc's own.
set(_warn -Wall -Wextra -Wpedantic -Werror
  -Wshadow -Wnon-virtual-dtor -Woverloaded-virtual -Wformat=2
  -Wimplicit-fallthrough -Wmissing-declarations -Wundef)
target_compile_options(borealis_flags INTERFACE "$<$<COMPILE_LANGUAGE:CXX>:${_warn}>")

if(BOREALIS_NATIVE)
  target_compile_options(borealis_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
else()
  # The data blenders keep 4 and 8 doubles in GCC vector types; without the
  # AVX/AVX-512 of -march=native GCC notes that passing them by value has
  # another ABI, which cannot matter: they never cross a library boundary.
  target_compile_options(borealis_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-psabi>)
endif()

if(BOREALIS_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_compile_options(borealis_flags INTERFACE "$<$<COMPILE_LANGUAGE:CXX>:${_san}>")
  target_link_options(borealis_flags INTERFACE ${_san})
  target_compile_definitions(borealis_flags INTERFACE BOREALIS_SANITIZE=1)
endif()

# GCC 12 reports -Wrestrict false positives inside libstdc++'s std::string
# operator+ at -O2 and above (GCC bug 105651, fixed in GCC 13).
target_compile_options(borealis_flags INTERFACE
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,13>>:-Wno-restrict>)
