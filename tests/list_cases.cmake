# Writes the case names a test program prints with --list into OUT (run after each build of it).
execute_process(COMMAND ${EXE} --list OUTPUT_FILE ${OUT}.new RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(REMOVE ${OUT}.new)
  message(FATAL_ERROR "${EXE} --list failed (${rc})")
endif()
file(RENAME ${OUT}.new ${OUT})
