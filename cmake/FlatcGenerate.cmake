# fm_flatc_generate(TARGET_VAR OUT_DIR schema...) runs flatc at build time and
# collects the generated headers. Debian's flatbuffers 2.0.8 ships no
# flatbuffers_generate_headers helper, so the rule is spelled out here.
function(fm_flatc_generate out_var out_dir)
  set(headers)
  foreach(schema ${ARGN})
    get_filename_component(name ${schema} NAME_WE)
    set(header ${out_dir}/${name}_generated.h)
    add_custom_command(
      OUTPUT ${header}
      COMMAND flatbuffers::flatc --cpp --cpp-std c++17 --scoped-enums --no-warnings
              -o ${out_dir} ${schema}
      DEPENDS ${schema} flatbuffers::flatc
      COMMENT "flatc ${name}.fbs"
      VERBATIM)
    list(APPEND headers ${header})
  endforeach()
  set(${out_var} ${headers} PARENT_SCOPE)
endfunction()

# fm_embed_text(OUT_CC NAMESPACE SYMBOL=FILE...) writes a .cc defining
# `extern const char* const SYMBOL` with each file's text, so that the JSON
# parser and printer read the very schemas flatc compiled.
function(fm_embed_text out_cc)
  set(args)
  set(deps)
  foreach(pair ${ARGN})
    string(REPLACE "=" ";" parts ${pair})
    list(GET parts 1 file)
    list(APPEND args ${pair})
    list(APPEND deps ${file})
  endforeach()
  add_custom_command(
    OUTPUT ${out_cc}
    COMMAND ${CMAKE_COMMAND} -DOUT=${out_cc} "-DPAIRS=${args}"
            -P ${PROJECT_SOURCE_DIR}/cmake/EmbedText.cmake
    DEPENDS ${deps} ${PROJECT_SOURCE_DIR}/cmake/EmbedText.cmake
    COMMENT "embedding schema text"
    VERBATIM)
endfunction()
