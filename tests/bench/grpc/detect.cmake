# Finds what bench_grpc needs (included from tests/bench/CMakeLists.txt):
# gRPC C++ and protobuf through pkg-config, protoc and grpc_cpp_plugin,
# and a C++ compiler. Sets AA_BENCH_GRPC_FOUND; when something is missing
# it says so and nothing of tests/bench/grpc/ is configured (not even the
# C++ language). AA_BENCH_GRPC=OFF skips it on purpose.
option(AA_BENCH_GRPC "Build bench_grpc when gRPC C++ is installed" ON)
set(AA_BENCH_GRPC_FOUND OFF)
if(NOT AA_BENCH_GRPC)
  message(STATUS "bench_grpc: AA_BENCH_GRPC is OFF, skipped")
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
  message(STATUS "bench_grpc: gRPC C++ not found, skipped")
endif()
