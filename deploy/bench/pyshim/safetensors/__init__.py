"""A pure-Python reader of the safetensors format (json header + raw little-endian tensors), enough for
diffusers' from_pretrained: the real package is a Rust extension Debian 12 does not ship. Verification only."""
import json
import struct

import torch as _torch

_DT = {"F32": _torch.float32, "F16": _torch.float16, "BF16": _torch.bfloat16, "F64": _torch.float64,
       "I64": _torch.int64, "I32": _torch.int32, "I16": _torch.int16, "I8": _torch.int8, "U8": _torch.uint8,
       "BOOL": _torch.bool}

def _read(path):
    """The header (name -> dtype, shape, data_offsets) and the data that follows it."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return header, memoryview(data)[8 + n:]

class SafetensorError(Exception):
    """The real package's error type (peft imports the name); this reader raises it for a bad header."""


class safe_open:
    def __init__(self, filename, framework="pt", device="cpu"):
        self._h, self._buf = _read(filename)
        self._meta = self._h.pop("__metadata__", None)
    def __enter__(self): return self
    def __exit__(self, *a): return False
    def keys(self): return list(self._h.keys())
    def metadata(self): return self._meta
    def get_tensor(self, name):
        e = self._h[name]
        b, end = e["data_offsets"]
        raw = bytearray(self._buf[b:end])
        t = _torch.frombuffer(raw, dtype=_DT[e["dtype"]]) if raw else _torch.empty(0, dtype=_DT[e["dtype"]])
        return t.reshape(e["shape"]).clone()
from . import torch  # noqa: E402  (safetensors.torch, as the real package provides)
