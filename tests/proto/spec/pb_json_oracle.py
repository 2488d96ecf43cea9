#!/usr/bin/python3
"""The independent check of dpod's JSON mapping: for each case pb_json_cases wrote (a packed message and
the JSON pb_json.c made of it), google.protobuf parses the message and MessageToJson, with the .proto's
field names, says what the JSON must be. The two must hold the same values, with the fields in the
same order.

usage: pb_json_oracle.py DESCRIPTOR_SET CASES_DIR"""
import glob
import json
import os
import sys

from google.protobuf import json_format

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pb_json_same import load_pool, message_class, same  # noqa: E402


def main():
    pool = load_pool(sys.argv[1])
    cases = sorted(glob.glob(os.path.join(sys.argv[2], "*.type")))
    if not cases:
        print("FAIL: no cases in", sys.argv[2])
        return 1
    failures = 0
    for case in cases:
        base = case[:-len(".type")]
        with open(case) as f:
            type_name = f.read().strip()
        cls = message_class(pool, type_name)
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
