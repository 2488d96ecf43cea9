#!/usr/bin/python3
"""dpoctl's JSON against an independent client: Python's grpcio asks the fake dpod for the same jobs and
events, and google.protobuf's MessageToJson (with the .proto's field names) says what `dpoctl -o json`
and `watch --events-jsonl` must print. The values must be equal and the fields in the same order.

usage: dpoctl_json_oracle.py DESCRIPTOR_SET DPOCTL ADDR"""
import json
import os
import subprocess
import sys

import grpc
from google.protobuf import json_format

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto", "spec"))
from pb_json_same import load_pool, message_class, same  # noqa: E402


def to_json(m):
    return json.loads(json_format.MessageToJson(m, preserving_proto_field_name=True))


def main():
    desc_path, dpoctl, addr = sys.argv[1:4]
    pool = load_pool(desc_path)
    M = lambda name: message_class(pool, "dpod.v1." + name)
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)

    def unary(method, req, resp_type):
        call = channel.unary_unary("/dpod.v1.Coordinator/" + method, request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=M(resp_type).FromString)
        return call(req, timeout=10)

    def dpoctl_json(*args, lines=False):
        out = subprocess.run([dpoctl, "--addr", addr] + list(args), check=False, capture_output=True, text=True).stdout
        return [json.loads(l) for l in out.splitlines() if l.strip()] if lines else json.loads(out)

    job7 = unary("GetJob", M("GetJobRequest")(job_id=7), "GetJobResponse").job
    jobs = unary("ListJobs", M("ListJobsRequest")(), "ListJobsResponse").jobs
    watch = channel.unary_stream("/dpod.v1.Coordinator/WatchJob", request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=M("JobEvent").FromString)
    events = list(watch(M("WatchJobRequest")(job_id=1, after_seq=0), timeout=20))
    cases = [
        ("get 7 -o json", to_json(job7), dpoctl_json("get", "7", "-o", "json")),
        ("get 7 --json", to_json(job7), dpoctl_json("get", "7", "--json")),
        ("checkpoints 7 -o json", [to_json(c) for c in job7.checkpoints], dpoctl_json("checkpoints", "7", "-o", "json")),
        ("list -o json", [to_json(j) for j in jobs], dpoctl_json("list", "-o", "json")),
        ("watch 1 --events-jsonl", [to_json(e) for e in events], dpoctl_json("watch", "1", "--events-jsonl", lines=True)),
    ]
    failures = 0
    for name, want, got in cases:
        if not want:
            print("FAIL: %s: the oracle got nothing to compare" % name)
            failures += 1
        elif same(want, got):
            print("ok: dpoctl %s is what MessageToJson writes" % name)
        else:
            failures += 1
            print("FAIL: dpoctl %s\n  MessageToJson: %s\n  dpoctl:        %s" % (name, json.dumps(want), json.dumps(got)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
