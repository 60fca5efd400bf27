# librmeeto_kernels.so for the emulated device (included by plugins_trt/CMakeLists.txt when
# RMEETO_EMULATED_DEVICE=ON): the unmodified kernels/*.cu, put through rewrite.py and compiled as C++
# with cuda_emulation.h force-included, plus the emulator itself. Also builds
# rmeeto_emulation_selftest, the emulation's own checks (selftest.cu).
option(RMEETO_EMULATION_SANITIZE "Build the emulated kernels with AddressSanitizer and UBSan" OFF)
find_package(Python3 COMPONENTS Interpreter REQUIRED)
set(RMEETO_EMULATION_DIR "${CMAKE_CURRENT_LIST_DIR}")

# The rewritten C++ of each .cu, generated in the build tree whenever the .cu or rewrite.py changes.
function(rmeeto_emulated_sources out)
  set(generated "")
  foreach(cu IN LISTS ARGN)
    get_filename_component(name "${cu}" NAME_WE)
    set(cpp "${CMAKE_CURRENT_BINARY_DIR}/emulated_sources/${name}.cpp")
    add_custom_command(OUTPUT "${cpp}"
      COMMAND Python3::Interpreter "${RMEETO_EMULATION_DIR}/rewrite.py" "${cu}" "${cpp}"
      DEPENDS "${cu}" "${RMEETO_EMULATION_DIR}/rewrite.py"
      COMMENT "Rewriting ${name}.cu for the emulated device" VERBATIM)
    set_source_files_properties("${cpp}" PROPERTIES
      COMPILE_OPTIONS "-include;${RMEETO_EMULATION_DIR}/cuda_emulation.h"
      OBJECT_DEPENDS "${RMEETO_EMULATION_DIR}/cuda_emulation.h")
    list(APPEND generated "${cpp}")
  endforeach()
  set(${out} "${generated}" PARENT_SCOPE)
endfunction()

function(rmeeto_emulated_target target)
  target_sources(${target} PRIVATE "${RMEETO_EMULATION_DIR}/emulator.cpp")
  # The emulation's cuda_runtime_api.h, cuda_fp16.h and cuda_bf16.h stand in for the toolkit's.
  target_include_directories(${target} PUBLIC "${RMEETO_EMULATION_DIR}/include" "${CMAKE_CURRENT_SOURCE_DIR}/kernels")
  target_compile_definitions(${target} PRIVATE RMEETO_EMULATED_DEVICE=1)
  # No FMA contraction anywhere: __fmul_rn must round its product, as on the GPU.
  target_compile_options(${target} PRIVATE -Wall -Wextra -Werror -Wno-unknown-pragmas -ffp-contract=off)
  if(RMEETO_EMULATION_SANITIZE)
    target_compile_options(${target} PUBLIC -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
    target_link_options(${target} PUBLIC -fsanitize=address,undefined)
  endif()
endfunction()

rmeeto_emulated_sources(rmeeto_kernel_sources
  "${CMAKE_CURRENT_SOURCE_DIR}/kernels/selective_scan.cu"
  "${CMAKE_CURRENT_SOURCE_DIR}/kernels/token_merge.cu")
add_library(rmeeto_kernels SHARED ${rmeeto_kernel_sources} kernels/status.cpp)
rmeeto_emulated_target(rmeeto_kernels)
target_link_options(rmeeto_kernels PRIVATE "LINKER:--no-undefined")

rmeeto_emulated_sources(rmeeto_selftest_sources "${RMEETO_EMULATION_DIR}/selftest.cu")
add_executable(rmeeto_emulation_selftest ${rmeeto_selftest_sources})
rmeeto_emulated_target(rmeeto_emulation_selftest)

message(STATUS "rmeeto: emulated device: librmeeto_kernels.so runs the kernels on the CPU (sanitizers: ${RMEETO_EMULATION_SANITIZE})")
