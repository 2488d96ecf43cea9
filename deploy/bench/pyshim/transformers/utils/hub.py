"""transformers.utils.hub, as far as peft imports it (LoftQ's shard lookup, not used here)."""


def get_checkpoint_shard_files(*a, **k):
    raise RuntimeError("transformers.utils.hub.get_checkpoint_shard_files: not provided by the pyshim stand-in")
