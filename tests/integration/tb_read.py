#!/usr/bin/python3
"""Reads a job's TensorBoard event files back without any of dpod's code, and checks them.

usage: tb_read.py TB_DIR METRICS_JSONL STEPS [--attempts N]
       tb_read.py --tear FILE N     (cuts FILE in the middle of its N-th last record, as a crash would)

The messages are built here from TensorBoard's published field numbers (tensorboard/compat/proto/
event.proto and summary.proto: Event.wall_time=1, step=2, file_version=3, summary=5; Summary.value=1;
Value.tag=1, simple_value=2), not from dpod's .proto, and the CRC-32C is this file's own, so a wrong
field number or checksum on dpod's side fails here. Checks: every record's framing and both CRCs, every
file starting with "brain.Event:2", only known tags, every training step 1..STEPS exactly once with the
values `dpoctl metrics --format jsonl` printed (to float32's precision), no evaluation or checkpoint twice at a step,
and with --attempts one `attempt/number` and one `attempt/exit_code` per attempt (of a job that ended). Prints one summary line; exits 1 naming the first
problem.
"""
import json
import math
import os
import struct
import sys

from google.protobuf import descriptor_pb2, descriptor_pool

try:
    from google.protobuf.message_factory import GetMessageClass
except ImportError:  # protobuf < 4.21
    from google.protobuf import message_factory

    def GetMessageClass(desc):
        return message_factory.MessageFactory(desc.file.pool).GetPrototype(desc)


TRAIN = {"train/loss": "loss", "train/implicit_acc": "implicit_acc", "train/policy_mse": "policy_mse",
         "train/ref_mse": "ref_mse", "train/reward_margin": "reward_margin", "train/grad_norm": "grad_norm",
         "train/lr": "learning_rate", "train/samples_per_sec": "samples_per_sec",
         "train/loss_scale": "loss_scale", "train/skipped": "skipped"}
EVAL = {"eval/loss", "eval/implicit_acc", "eval/reward_margin", "eval/preferred_mode_rate", "eval/mode_distance"}


def fail(msg):
    print("tb_read: " + msg, file=sys.stderr)
    sys.exit(1)


def event_class():
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="tb_read_event.proto", package="tbread", syntax="proto3")
    summary = fd.message_type.add(name="Summary")
    value = summary.nested_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                      type_name=".tbread.Summary.Value")
    event = fd.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".tbread.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return GetMessageClass(pool.FindMessageTypeByName("tbread.Event"))


def crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


TABLE = crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    with open(path, "rb") as f:
        buf = f.read()
    off = 0
    while off < len(buf):
        if len(buf) - off < 12:
            fail(f"{path}: {len(buf) - off} bytes left at {off}: a torn record")
        (n,) = struct.unpack_from("<Q", buf, off)
        (len_crc,) = struct.unpack_from("<I", buf, off + 8)
        if masked(buf[off:off + 8]) != len_crc:
            fail(f"{path}: the length CRC of the record at {off} does not match")
        if len(buf) - off - 12 < n + 4:
            fail(f"{path}: the record at {off} is torn")
        data = buf[off + 12:off + 12 + n]
        (data_crc,) = struct.unpack_from("<I", buf, off + 12 + n)
        if masked(data) != data_crc:
            fail(f"{path}: the data CRC of the record at {off} does not match")
        yield data
        off += 12 + n + 4


def tear(path, n):
    starts, off = [], 0
    for data in records(path):
        starts.append((off, len(data)))
        off += 12 + len(data) + 4
    if len(starts) <= n:
        fail(f"{path}: only {len(starts)} records")
    at, size = starts[-n]
    os.truncate(path, at + 12 + size // 2)
    print(f"tb_read: cut {path} at {at + 12 + size // 2}, inside its record at {at}: {n} records torn off")


def main(argv):
    if len(argv) == 4 and argv[1] == "--tear":
        return tear(argv[2], int(argv[3]))
    if len(argv) not in (4, 6) or (len(argv) == 6 and argv[4] != "--attempts"):
        fail("usage: tb_read.py TB_DIR METRICS_JSONL STEPS [--attempts N]")
    tb_dir, jsonl, steps = argv[1], argv[2], int(argv[3])
    attempts = int(argv[5]) if len(argv) == 6 else None
    assert crc32c(b"123456789") == 0xE3069283
    Event = event_class()
    metrics = {}
    with open(jsonl) as f:
        for line in f:
            if line.strip():
                m = json.loads(line)
                metrics[int(m["step"])] = m
    files = sorted(p for p in os.listdir(tb_dir) if p.startswith("events.out.tfevents."))
    if not files:
        fail(f"{tb_dir}: no event files")
    train, evals, ckpts, n_attempts, n_exits, n_records = {}, {}, {}, 0, 0, 0
    for name in files:
        for i, data in enumerate(records(os.path.join(tb_dir, name))):
            n_records += 1
            ev = Event()
            ev.ParseFromString(data)
            if i == 0:
                if ev.file_version != "brain.Event:2":
                    fail(f"{name}: the first record is not file_version brain.Event:2: {ev}")
                continue
            if not ev.HasField("summary") or ev.wall_time <= 0:
                fail(f"{name}: record {i} is not a summary with a wall time: {ev}")
            for v in ev.summary.value:
                if v.tag in TRAIN:
                    train.setdefault(ev.step, {}).setdefault(v.tag, []).append(v.simple_value)
                elif v.tag in EVAL:
                    evals.setdefault((ev.step, v.tag), []).append(v.simple_value)
                elif v.tag == "checkpoint/size_mb":
                    ckpts.setdefault(ev.step, []).append(v.simple_value)
                elif v.tag == "attempt/number":
                    n_attempts += 1
                elif v.tag == "attempt/exit_code":
                    n_exits += 1
                else:
                    fail(f"{name}: unknown tag {v.tag!r}")
    if sorted(train) != list(range(1, steps + 1)):
        missing = sorted(set(range(1, steps + 1)) - set(train))
        extra = sorted(set(train) - set(range(1, steps + 1)))
        fail(f"training steps: missing {missing[:10]}, unexpected {extra[:10]}")
    if sorted(metrics) != list(range(1, steps + 1)):
        fail(f"{jsonl}: does not hold steps 1..{steps}")
    for step, tags in train.items():
        for tag, values in tags.items():
            if len(values) != 1:
                fail(f"step {step}: {tag} written {len(values)} times")
            want = metrics[step].get(TRAIN[tag])
            if want is None and not math.isfinite(values[0]):
                continue  # a non-finite metric is null in JSON
            if want is None:
                fail(f"step {step}: {tag} written but the job's metrics have no {TRAIN[tag]}")
            # float32 of the double; JSON's double may be an ulp off the stored one (cJSON prints 15
            # digits when they read back within DBL_EPSILON), so a tie may round either way.
            if not math.isclose(values[0], float(want), rel_tol=1.2e-7, abs_tol=1e-37):
                fail(f"step {step}: {tag} is {values[0]}, the job's metrics say {want}")
        if "train/loss" not in tags:
            fail(f"step {step}: no train/loss")
    for key, values in list(evals.items()) + list(ckpts.items()):
        if len(values) != 1:
            fail(f"{key}: written {len(values)} times")
    if attempts is not None and (n_attempts, n_exits) != (attempts, attempts):
        fail(f"{n_attempts} attempt/number and {n_exits} attempt/exit_code records, {attempts} attempts")
    print(f"tb_read: {len(files)} files, {n_records} records, steps 1..{steps} once each, "
          f"{len(evals)} eval values, {len(ckpts)} checkpoints, {n_attempts} attempts")


if __name__ == "__main__":
    main(sys.argv)
