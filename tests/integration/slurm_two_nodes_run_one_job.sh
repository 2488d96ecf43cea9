#!/usr/bin/env bash
# A job across two Slurm nodes: two slurmd, each in network and UTS namespaces of its own (host names
# node1 and node2, their own addresses on a bridge), so that Open MPI sees two hosts and the ranks talk
# TCP across the bridge, as across a cluster's network. dpod on the host side submits a 2-rank job with
# one rank a node; the ranks report to dpod's report listener on the bridge; the job succeeds with every
# step once, and its weights are bit-identical to the same job run by mpirun as 2 ranks on one host
# (data parallelism stays exact when the all-reduce crosses nodes).
source "$(dirname "$0")/lib.sh"
source "$DPOD_SOURCE_DIR/tests/slurm/slurm_fixture.sh"
IT_CLEANUP+=('slurm_down "$T/slurm"')
slurm_up "$T/slurm" 1 2 || it_fail "the test's two-node Slurm cluster did not start"
# The ranks' traffic goes over the bridge: no shared memory between "nodes", no UCX.
export OMPI_MCA_btl_tcp_if_include="$SLURM_NET.0/24" OMPI_MCA_btl=self,tcp,vader OMPI_MCA_pml=ob1
IT_JOBS="$T/shared/jobs"
it_start_dpod --launcher slurm --poll-interval 0.5 --report-listen "$SLURM_NET.1:0" --jobs-dir "$IT_JOBS"
grep -q "report address $SLURM_NET.1:" "$T/dpod.log" || it_fail "the ranks are not told the bridge address"

EX="$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml"
JOB=(--set ranks=2 --set train.steps=8 --set train.checkpoint_every=4 --set train.batch_size=4
     --set data.pairs=64 --set train.learning_rate=1e-4)
id=$(it_submit "$EX" "${JOB[@]}" --set resources.ranks_per_node=1 --name two-nodes)
nodes=""
for _ in $(seq 1 600); do
  nodes=$(squeue --me --states=all --noheader --format="%j %N" | awk -v n="dpod-$id" '$1 == n {print $2}')
  [ "$nodes" = "node[1-2]" ] && break
  sleep 0.1
done
[ "$nodes" = "node[1-2]" ] || it_fail "the job did not run on both nodes (nodes: '$nodes')"
"$DPOCTL_BIN" watch "$id" >/dev/null 2>&1 || it_fail "the two-node job did not succeed"
it_check_steps_once "$id" 8

# The same job, 2 ranks on this host under mpirun, for the weights.
"$DPOCTL_BIN" submit "$EX" "${JOB[@]}" --dry-run >"$T/job.yaml" || it_fail "dpoctl --dry-run failed"
mkdir -p "$T/local/tmp"
( unset OMPI_MCA_btl_tcp_if_include
  TMPDIR="$T/local/tmp" mpirun -np 2 --oversubscribe --bind-to none "$WORKER_BIN" --spec "$T/job.yaml" \
    --run-dir "$T/local" >"$T/local.log" 2>&1 ) || it_fail "the one-host run failed: $(tail -n 5 "$T/local.log")"
f=checkpoints/step-000008/diffusion_pytorch_model.safetensors
cmp "$IT_JOBS/$id/$f" "$T/local/$f" || it_fail "the two-node job's weights differ from the one-host run's"
echo "PASS: a 2-rank job across two Slurm nodes succeeded, bit-identical to 2 ranks on one host"
