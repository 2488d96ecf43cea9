#!/bin/sh
# dpoctl's JSON output against grpcio + MessageToJson on the same fake dpod (dpoctl_json_oracle.py).
# usage: dpoctl_json_oracle.sh DPOCTL FAKE_DPOD DESCRIPTOR_SET
set -u
dpoctl=$1 fake=$2 desc=$3
. "$(dirname "$0")/start_fake_dpod.sh"
/usr/bin/python3 "$(dirname "$0")/dpoctl_json_oracle.py" "$desc" "$dpoctl" "$addr"
