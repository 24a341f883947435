# A message without a handler does not compile: builds dispatch_handlers.cpp
# with every handler (must compile) and with one missing (must not, and the
# compiler must say it is the missing on()).
set(cmd ${CXX} -std=c++17 -fsyntax-only -I${SRC}/src -I${SRC}/include ${SRC}/tests/wire/dispatch_handlers.cpp)
execute_process(COMMAND ${cmd} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the complete handler does not compile:\n${err}")
endif()
execute_process(COMMAND ${cmd} -DCOX_DROP_ONE RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "a handler without on(FetchData) compiled")
endif()
if(NOT err MATCHES "FetchData")
  message(FATAL_ERROR "a handler without on(FetchData) failed to compile, but not for that reason:\n${err}")
endif()
message(STATUS "a handler missing on(FetchData) is refused at compile time")
