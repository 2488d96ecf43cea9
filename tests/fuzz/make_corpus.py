#!/usr/bin/env python3
"""Writes the seed corpora in corpus/<target>/: a few valid inputs and a few broken ones per target, each a
few KB at most. Run from anywhere: python3 tests/fuzz/make_corpus.py [FIXTURES_DIR]. The files are
committed; rerun this only to change them. Files named regression-* are inputs the fuzzers found, kept
as they were found (each with a unit test beside the fix); this script does not write them. The RPC
seeds (corpus/fuzz_rpc/) are real requests packed with protobuf-c: DPOD_FUZZ_WRITE_SEEDS=<dir> fuzz_rpc
writes them."""
import json
import os
import shutil
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "shared", "fixtures")
TESTS = os.path.dirname(HERE)
SEP = b"\n@@next-file@@\n"  # FUZZ_SEP in fuzz_util.h

SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes), written in that order."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


def f16(*v):
    return struct.pack("<%de" % len(v), *v)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def corpus_safetensors():
    t = "fuzz_safetensors"
    fixture = os.path.join(FIXTURES, "tiny-sd", "inputs.safetensors")
    if os.path.exists(fixture):
        shutil.copyfile(fixture, os.path.join(HERE, "corpus", t, "tiny-sd-inputs.safetensors"))
    write(t, "valid-f32-meta", safetensors([("a.weight", "F32", [2, 2], f32(1, 2, 3, 4))], {"format": "pt"}))
    write(t, "valid-mixed", safetensors([("h", "F16", [3], f16(1, -2, 0.5)), ("b", "BF16", [1], b"\x80\x3f"),
                                         ("i", "I64", [1], struct.pack("<q", -7)), ("u", "U8", [2], b"\x01\x02"),
                                         ("s", "F64", [], struct.pack("<d", 3.5)), ("e", "I32", [0, 4], b"")]))
    good = safetensors([("x", "F32", [1], f32(1))])
    write(t, "broken-truncated", good[:-2])
    write(t, "broken-header-too-long", struct.pack("<Q", 1 << 40) + b"{}")
    h = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}'
    write(t, "broken-overlap", struct.pack("<Q", len(h)) + h + b"\0" * 6)
    h = b'{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}'
    write(t, "broken-dtype", struct.pack("<Q", len(h)) + h + b"\0" * 4)
    h = b'{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,4]}}'
    write(t, "broken-shape-bytes", struct.pack("<Q", len(h)) + h + b"\0" * 4)


def dataset_files(latent="F32", empty=False, nan=False, bad_prompt=False):
    pack = f32 if latent == "F32" else f16
    C, H, W, L, D, prompts, pairs = 1, 2, 2, 2, 3, 2, 3
    emb = pack(*[0.1 * i for i in range(prompts * L * D)])
    a = safetensors([("embedding", latent, [prompts, L, D], emb)])
    win = [0.5] * (pairs * C * H * W)
    if nan:
        win[5] = float("nan")
    idx = [0, 1, 7 if bad_prompt else 0]
    b = safetensors([("winner", latent, [pairs, C, H, W], pack(*win)),
                     ("loser", latent, [pairs, C, H, W], pack(*([-0.5] * (pairs * C * H * W)))),
                     ("prompt", "I32", [pairs], struct.pack("<3i", *idx))])
    m = {"format": "dpod-preference", "version": 1, "latent_shape": [C, H, W], "text_len": L, "embed_dim": D,
         "latent_dtype": latent, "embed_dtype": latent,
         "prompts": {"count": prompts, "shards": [{"file": "a.safetensors", "count": prompts}]},
         "splits": {"train": {"pairs": pairs, "shards": [{"file": "b.safetensors", "pairs": pairs}]}}}
    files = [json.dumps(m, indent=1).encode(), a, b]
    if empty:
        m["empty_prompt"] = "c.safetensors"
        files[0] = json.dumps(m, indent=1).encode()
        files.append(safetensors([("embedding", latent, [L, D], pack(*([0.0] * (L * D))))]))
    return m, files


def corpus_dataset():
    t = "fuzz_dataset"
    write(t, "valid-f32", SEP.join(dataset_files()[1]))
    write(t, "valid-f16-empty-prompt", SEP.join(dataset_files("F16", empty=True)[1]))
    write(t, "broken-nan", SEP.join(dataset_files(nan=True)[1]))
    write(t, "broken-prompt-index", SEP.join(dataset_files(bad_prompt=True)[1]))
    m, files = dataset_files()
    m["splits"]["train"]["pairs"] = 4
    write(t, "broken-pair-count", SEP.join([json.dumps(m).encode()] + files[1:]))
    m, files = dataset_files()
    m["prompts"]["shards"][0]["file"] = "../a.safetensors"
    write(t, "broken-shard-path", SEP.join([json.dumps(m).encode()] + files[1:]))
    write(t, "broken-not-json", b'{"format": "dpod-preference", "version": 1,')


def checkpoint_files(corrupt_crc=False, no_weights=False, rank_json=None):
    weights = safetensors([("conv_in.weight", "F32", [2], f32(0.25, -1))])
    config = b'{"_class_name": "UNet2DConditionModel", "sample_size": 8}\n'
    entries = {"config.json": config, "diffusion_pytorch_model.safetensors": weights}
    rank = rank_json if rank_json is not None else (
        b'{"magic": "dpod-rank-state", "version": 1, "world_size": 1, "rank": 0, "step": 1, '
        b'"data_position": 16, "seed": "18446744073709551615"}\n')
    entries["rank-00000.json"] = rank
    files = {}
    for name, data in sorted(entries.items()):
        if no_weights and name == "diffusion_pytorch_model.safetensors":
            continue
        crc = zlib.crc32(data) ^ (1 if corrupt_crc else 0)
        files[name] = {"size": len(data), "crc32": "%08x" % crc}
    marker = {"magic": "dpod-checkpoint", "version": 1, "step": 1, "world_size": 1, "files": files}
    # The order of the parts is fuzz_checkpoint.c's: COMPLETE, rank record, weights, config.
    return [json.dumps(marker, indent=1).encode(), rank, weights, config]


def corpus_checkpoint():
    t = "fuzz_checkpoint"
    write(t, "valid", SEP.join(checkpoint_files()))
    write(t, "broken-crc", SEP.join(checkpoint_files(corrupt_crc=True)))
    write(t, "broken-no-weights", SEP.join(checkpoint_files(no_weights=True)))
    write(t, "broken-rank-record", SEP.join(checkpoint_files(rank_json=b'{"magic": "dpod-rank-state", "rank": -1}')))
    write(t, "broken-marker", b'{"magic": "dpod-checkpoint", "step": 1.5, "files": []}')
    # A fifth part: the loss scaler's state (fp16), as loss_scale.c writes it.
    scaler = (b'{"magic": "dpod-loss-scale", "version": 1, "scale": 32768, "growth_tracker": 3, "skipped": 1, '
              b'"init_scale": 65536, "growth_interval": 2000}\n')
    write(t, "valid-loss-scale", SEP.join(checkpoint_files() + [scaler]))


def corpus_job_spec():
    t = "fuzz_job_spec"
    for sub, name in [("integration", "ci-dpo.yaml"), ("integration", "ci-sft.yaml"), ("client", "zero-beta.yaml"),
                      ("client", "unknown-key.yaml"), ("client", "string-for-int.yaml"),
                      ("client", "scalar-for-section.yaml")]:
        with open(os.path.join(TESTS, sub, "data", name), "rb") as f:
            write(t, name, f.read())
    write(t, "valid-with-sets", b"name: sets\nranks: 2\ntrain:\n  beta: 2000\n\0train.steps=10\n"
                                b"train.objective=sft\nmodel.weights=/tmp/w.safetensors\nranks=1\n")
    write(t, "broken-two-documents", b"name: a\n---\nname: b\n")
    write(t, "broken-set", b"name: x\n\0train.steps=-1\nnope=1\n")
    write(t, "broken-yaml", b"train: [1, 2\n  beta: : :\n")


if __name__ == "__main__":
    for fn in (corpus_safetensors, corpus_dataset, corpus_checkpoint, corpus_job_spec):
        fn()
