# dpo-tool's LoRA against diffusers + peft (fixtures/tiny-sd/lora): `forward --lora` must reproduce
# outputs_with_lora (1e-5) and `merge-lora` must write merged_unet's weights (1e-6).
# -DTOOL=dpo-tool -DCHECK=test_forward_file -DFIX=<fixtures>/tiny-sd -DOUT=<scratch prefix> -DMODE=forward|merge
if(MODE STREQUAL "forward")
  file(REMOVE ${OUT}.safetensors)
  execute_process(
    COMMAND ${TOOL} forward --config ${FIX}/config.json --weights ${FIX}/unet.safetensors
            --lora ${FIX}/lora/pytorch_lora_weights.safetensors --inputs ${FIX}/inputs.safetensors
            --out ${OUT}.safetensors --threads 2
    RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "dpo-tool forward --lora failed (${rc})")
  endif()
  execute_process(COMMAND ${CHECK} ${OUT}.safetensors ${FIX}/lora/outputs_with_lora.safetensors 1e-5 RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "dpo-tool forward --lora output differs from diffusers'")
  endif()
else()
  file(REMOVE ${OUT}.safetensors)
  execute_process(
    COMMAND ${TOOL} merge-lora ${FIX}/unet.safetensors ${FIX}/lora/pytorch_lora_weights.safetensors
            ${OUT}.safetensors --config ${FIX}/config.json
    RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "dpo-tool merge-lora failed (${rc})")
  endif()
  # diff exits 1 if a name or shape differs or any element is further apart than --atol.
  execute_process(COMMAND ${TOOL} diff ${OUT}.safetensors ${FIX}/lora/merged_unet.safetensors --atol 1e-6
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "dpo-tool merge-lora's weights differ from diffusers' merged_unet")
  endif()
  # The base alone must not pass, or the comparison proves nothing.
  execute_process(COMMAND ${TOOL} diff ${FIX}/unet.safetensors ${FIX}/lora/merged_unet.safetensors --atol 1e-6
                  RESULT_VARIABLE rc OUTPUT_QUIET)
  if(rc EQUAL 0)
    message(FATAL_ERROR "the base weights pass as merged: the comparison cannot tell")
  endif()
endif()
