# Finds what bench_grpc needs (included from tests/bench/CMakeLists.txt):
# gRPC C++ and protobuf through pkg-config, protoc and grpc_cpp_plugin,
# and a C++ compiler. Sets AA_BENCH_GRPC_FOUND; when something is missing
# it says so and nothing of tests/bench/grpc/ is configured (not even the
# C++ language). AA_BENCH_GRPC=OFF skips it on purpose, and so does a
# ThreadSanitizer build.
option(AA_BENCH_GRPC "Build bench_grpc when gRPC C++ is installed" ON)
set(AA_BENCH_GRPC_FOUND OFF)
if(NOT AA_BENCH_GRPC)
  message(STATUS "bench_grpc: AA_BENCH_GRPC is OFF, skipped")
  return()
endif()
# gRPC and abseil are not built with ThreadSanitizer, which reports races
# inside them (their own synchronisation is invisible to it).
if(AA_SANITIZER STREQUAL "thread")
  message(STATUS "bench_grpc: not built with ThreadSanitizer, skipped")
  return()
endif()
include(CheckLanguage)
check_language(CXX)
pkg_check_modules(AA_GRPCPP QUIET IMPORTED_TARGET grpc++ protobuf)
find_program(AA_PROTOC protoc)
find_program(AA_GRPC_CPP_PLUGIN grpc_cpp_plugin)
if(AA_GRPCPP_FOUND AND AA_PROTOC AND AA_GRPC_CPP_PLUGIN
   AND CMAKE_CXX_COMPILER)
  set(AA_BENCH_GRPC_FOUND ON)
else()
  set(missing)
  if(NOT AA_GRPCPP_FOUND)
    list(APPEND missing "pkg-config grpc++ protobuf")
  endif()
  if(NOT AA_PROTOC)
    list(APPEND missing protoc)
  endif()
  if(NOT AA_GRPC_CPP_PLUGIN)
    list(APPEND missing grpc_cpp_plugin)
  endif()
  if(NOT CMAKE_CXX_COMPILER)
    list(APPEND missing "a C++ compiler")
  endif()
  list(JOIN missing ", " missing)
  message(STATUS "bench_grpc: gRPC C++ not found, skipped")
  message(STATUS "bench_grpc: missing: ${missing}")
endif()
