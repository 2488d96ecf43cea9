"""transformers.integrations, as far as peft asks it: no DeepSpeed here."""


def is_deepspeed_zero3_enabled():
    return False


deepspeed_config = None
