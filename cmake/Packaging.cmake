# Debian packages: `cpack -G DEB` in the build tree gives fm-common, fm-broker,
# fm-scheduler, fm-worker and fm-tools. Binaries in /usr/bin, units in
# /lib/systemd/system, configuration in /etc/fm (conffiles), the system user through
# sysusers.d, man pages made by help2man from each program's --help, bash completion.
set(FM_PACKAGING ${PROJECT_SOURCE_DIR}/packaging)
set(FM_DAEMONS broker scheduler worker)
set(FM_TOOLS submit tap ctl keygen)

# Man pages: help2man runs each program (--help, --version) at build time.
find_program(HELP2MAN help2man)
set(FM_MAN_DIR ${CMAKE_BINARY_DIR}/man)
set(FM_MAN_PAGES)
if(HELP2MAN)
  set(FM_MAN_broker "routes directed messages and the event bus of one fm node")
  set(FM_MAN_scheduler "places tasks on the fm workers that can run them")
  set(FM_MAN_worker "runs the tasks the fm scheduler dispatches to it")
  set(FM_MAN_submit "submit tasks (JSON lines) to an fm cluster")
  set(FM_MAN_tap "follow or replay the fm event stream")
  set(FM_MAN_ctl "inspect and operate an fm cluster")
  set(FM_MAN_keygen "make fm CURVE certificates")
  foreach(name IN LISTS FM_DAEMONS FM_TOOLS)
    set(page ${FM_MAN_DIR}/fm-${name}.1.gz)
    add_custom_command(
      OUTPUT ${page}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${FM_MAN_DIR}
      COMMAND ${HELP2MAN} --no-info --no-discard-stderr --section 1 --name "${FM_MAN_${name}}"
              --output ${FM_MAN_DIR}/fm-${name}.1 $<TARGET_FILE:fm-${name}>
      COMMAND gzip -9nf ${FM_MAN_DIR}/fm-${name}.1
      DEPENDS fm-${name}
      COMMENT "man page fm-${name}(1)"
      VERBATIM)
    list(APPEND FM_MAN_PAGES ${page})
  endforeach()
  add_custom_target(man ALL DEPENDS ${FM_MAN_PAGES})
else()
  message(WARNING "help2man not found: the packages will have no man pages (apt-get install help2man)")
endif()

function(fm_program_files name component)
  if(HELP2MAN)
    install(FILES ${FM_MAN_DIR}/fm-${name}.1.gz DESTINATION share/man/man1 COMPONENT ${component})
  endif()
  install(FILES ${FM_PACKAGING}/bash-completion/fm DESTINATION share/bash-completion/completions
          RENAME fm-${name} COMPONENT ${component})
endfunction()

foreach(daemon IN LISTS FM_DAEMONS)
  fm_program_files(${daemon} ${daemon})
  install(FILES ${FM_PACKAGING}/systemd/fm-${daemon}.service DESTINATION /lib/systemd/system COMPONENT ${daemon})
  install(FILES ${FM_PACKAGING}/etc/${daemon}.conf DESTINATION /etc/fm COMPONENT ${daemon})
  file(WRITE ${CMAKE_BINARY_DIR}/packaging/${daemon}/conffiles "/etc/fm/${daemon}.conf\n")
  configure_file(${FM_PACKAGING}/debian/postinst-daemon ${CMAKE_BINARY_DIR}/packaging/${daemon}/postinst COPYONLY)
  string(TOUPPER ${daemon} up)
  set(CPACK_DEBIAN_${up}_PACKAGE_CONTROL_EXTRA
      "${CMAKE_BINARY_DIR}/packaging/${daemon}/conffiles;${CMAKE_BINARY_DIR}/packaging/${daemon}/postinst")
  set(CPACK_DEBIAN_${up}_PACKAGE_NAME fm-${daemon})
  set(CPACK_DEBIAN_${up}_PACKAGE_DEPENDS "fm-common (= ${PROJECT_VERSION})")
  set(CPACK_DEBIAN_${up}_PACKAGE_SECTION net)
endforeach()
set(CPACK_DEBIAN_WORKER_PACKAGE_SUGGESTS "podman | docker.io")
install(FILES ${FM_PACKAGING}/examples/docker.conf DESTINATION share/doc/fm-worker/examples COMPONENT worker)
foreach(tool IN LISTS FM_TOOLS)
  fm_program_files(${tool} tools)
endforeach()
set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME fm-tools)
set(CPACK_DEBIAN_TOOLS_PACKAGE_SECTION net)

# fm-common: the system user and the operator's documentation.
install(FILES ${FM_PACKAGING}/sysusers/fm.conf DESTINATION lib/sysusers.d COMPONENT common)
install(FILES ${PROJECT_SOURCE_DIR}/docs/OPERATIONS.md ${PROJECT_SOURCE_DIR}/docs/DEPLOY.md
              ${PROJECT_SOURCE_DIR}/docs/ARCHITECTURE.md ${PROJECT_SOURCE_DIR}/examples/prometheus/fm-alerts.yml
        DESTINATION share/doc/fm-common COMPONENT common)
configure_file(${FM_PACKAGING}/debian/postinst-common ${CMAKE_BINARY_DIR}/packaging/common/postinst COPYONLY)
set(CPACK_DEBIAN_COMMON_PACKAGE_NAME fm-common)
set(CPACK_DEBIAN_COMMON_PACKAGE_CONTROL_EXTRA "${CMAKE_BINARY_DIR}/packaging/common/postinst")
set(CPACK_DEBIAN_COMMON_PACKAGE_DEPENDS "systemd")
set(CPACK_DEBIAN_COMMON_PACKAGE_ARCHITECTURE all)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME fm)
set(CPACK_PACKAGE_VENDOR "fm")
set(CPACK_PACKAGE_CONTACT "fm maintainers <fm@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "dispatches tasks over ZeroMQ only to workers that can run them")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_COMPONENTS_ALL common broker scheduler worker tools)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_STRIP_FILES ON)
include(CPack)
