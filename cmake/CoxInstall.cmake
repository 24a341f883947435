# Install rules and the package config, so that other projects can
# find_package(coxswain) from an install tree or from this build tree.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(COX_CONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/coxswain)

install(TARGETS cox EXPORT coxswainTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
if(TARGET cox-worker)
  install(TARGETS cox-worker RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/cox DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# The op declarations generated from src/ops/ops.def, which <cox/tensor.hpp> includes.
install(FILES ${COX_OPS_HEADERS} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/cox)
install(EXPORT coxswainTargets NAMESPACE cox:: DESTINATION ${COX_CONFIG_DIR})

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/coxswainConfig.cmake.in
  ${PROJECT_BINARY_DIR}/coxswainConfig.cmake
  INSTALL_DESTINATION ${COX_CONFIG_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/coxswainConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/coxswainConfig.cmake ${PROJECT_BINARY_DIR}/coxswainConfigVersion.cmake
  DESTINATION ${COX_CONFIG_DIR})

# The build tree is a package too: coxswain_DIR=<build> works without installing.
export(EXPORT coxswainTargets NAMESPACE cox:: FILE ${PROJECT_BINARY_DIR}/coxswainTargets.cmake)
