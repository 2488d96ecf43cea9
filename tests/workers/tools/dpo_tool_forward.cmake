# Runs `dpo-tool forward` on a fixture (tiny-sd, tiny-sdxl) and compares its output with diffusers'.
# -DTOOL=dpo-tool -DCHECK=test_forward_file -DFIX=<fixtures>/tiny-sd -DOUT=<output file>
file(REMOVE ${OUT})
execute_process(
  COMMAND ${TOOL} forward --config ${FIX}/config.json --weights ${FIX}/unet.safetensors
          --inputs ${FIX}/inputs.safetensors --out ${OUT} --threads 2
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "dpo-tool forward failed (${rc})")
endif()
execute_process(COMMAND ${CHECK} ${OUT} ${FIX}/outputs.safetensors 1e-5 RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "dpo-tool forward output differs from diffusers")
endif()
