#!/usr/bin/python3
"""The independent check of dpod's JSON mapping: for each case pb_json_cases wrote (a packed message and
the JSON pb_json.c made of it), google.protobuf parses the message and MessageToJson, with the .proto's
field names, says what the JSON must be. The two must hold the same values, with the fields in the
same order.

usage: pb_json_oracle.py DESCRIPTOR_SET CASES_DIR"""
import glob
import json
import math
import os
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            not isinstance(a, bool) and not isinstance(b, bool) and (a == b or (math.isnan(a) and math.isnan(b)))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main():
    fds = descriptor_pb2.FileDescriptorSet()
    with open(sys.argv[1], "rb") as f:
        fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    cases = sorted(glob.glob(os.path.join(sys.argv[2], "*.type")))
    if not cases:
        print("FAIL: no cases in", sys.argv[2])
        return 1
    failures = 0
    for case in cases:
        base = case[:-len(".type")]
        with open(case) as f:
            type_name = f.read().strip()
        try:
            cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(type_name))
        except AttributeError:  # protobuf before 4.22
            cls = message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName(type_name))
        msg = cls()
        with open(base + ".bin", "rb") as f:
            msg.ParseFromString(f.read())
        want = json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))
        with open(base + ".json") as f:
            got = json.loads(f.read())
        if not same(want, got):
            failures += 1
            print("FAIL: %s (%s)\n  MessageToJson: %s\n  pb_json:       %s" %
                  (os.path.basename(base), type_name, json.dumps(want), json.dumps(got)))
    print("%s: %d of %d cases agree with MessageToJson" % ("PASS" if not failures else "FAIL",
                                                          len(cases) - failures, len(cases)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
