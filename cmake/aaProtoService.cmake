# aaProtoService.cmake: aa_add_proto_service(TARGET FILE.proto
#   [IMPORT_DIRS dir...]), installed with aaproxy's CMake package.
#
# Runs protoc-c on FILE.proto at build time (into the build tree), adds the
# generated .pb-c.c to TARGET, puts the generated header on TARGET's include
# path (#include "FILE.pb-c.h") and links TARGET with aa::service, so that
# TARGET can register or call the .proto's services (aa/service.h). The
# .proto's own directory is always on protoc-c's import path; IMPORT_DIRS
# adds more. Call it once per .proto file.
if(NOT AA_PROTOC_C)
  find_program(AA_PROTOC_C protoc-c)
endif()

function(aa_add_proto_service target proto)
  cmake_parse_arguments(A "" "" "IMPORT_DIRS" ${ARGN})
  if(NOT TARGET ${target})
    message(FATAL_ERROR "aa_add_proto_service: no target ${target}")
  endif()
  if(NOT AA_PROTOC_C)
    message(FATAL_ERROR
      "aa_add_proto_service: protoc-c not found (Debian: protobuf-c-compiler)")
  endif()
  get_filename_component(abs ${proto} ABSOLUTE)
  get_filename_component(dir ${abs} DIRECTORY)
  get_filename_component(name ${abs} NAME_WE)
  set(out ${CMAKE_CURRENT_BINARY_DIR}/aa_proto/${target})
  set(paths --proto_path=${dir})
  foreach(d ${A_IMPORT_DIRS})
    get_filename_component(d ${d} ABSOLUTE)
    list(APPEND paths --proto_path=${d})
  endforeach()
  add_custom_command(
    OUTPUT ${out}/${name}.pb-c.c ${out}/${name}.pb-c.h
    COMMAND ${CMAKE_COMMAND} -E make_directory ${out}
    COMMAND ${AA_PROTOC_C} --c_out=${out} ${paths} ${abs}
    DEPENDS ${abs}
    COMMENT "protoc-c: ${name}.proto for ${target}"
    VERBATIM)
  target_sources(${target} PRIVATE ${out}/${name}.pb-c.c ${out}/${name}.pb-c.h)
  # Generated code is protoc-c's, not the target's: no warnings for it.
  set_source_files_properties(${out}/${name}.pb-c.c PROPERTIES
    COMPILE_OPTIONS "-w")
  target_include_directories(${target} PUBLIC ${out})
  target_link_libraries(${target} PUBLIC aa::service)
endfunction()
