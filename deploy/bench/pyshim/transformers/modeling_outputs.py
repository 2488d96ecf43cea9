"""The output classes peft_model.py imports for its text-model heads, which a UNet never builds."""


class _Output(dict):
    """Names only: nothing here constructs one."""


class SequenceClassifierOutput(_Output):
    pass


class TokenClassifierOutput(_Output):
    pass


class QuestionAnsweringModelOutput(_Output):
    pass
