#!/usr/bin/env bash
# dpod --hostfile: the local launcher's mpirun places the ranks on the hostfile's hosts. The hosts are
# two network and UTS namespaces of this machine (node1, node2 on a bridge, made by the Slurm test
# fixture without Slurm); Open MPI reaches them through a plm_rsh_agent that enters the namespace
# instead of ssh (there is no sshd here; over ssh it is the same mpirun, untested). The job succeeds
# with every step once, one rank on each host, and reports to dpod's listener on the bridge.
source "$(dirname "$0")/lib.sh"
source "$DPOD_SOURCE_DIR/tests/slurm/slurm_fixture.sh"
IT_CLEANUP+=('slurm_down "$T/hosts"')
mkdir -p "$T/hosts"
slurm_nodes_up "$T/hosts" 2 || it_fail "cannot make the hosts' namespaces"
cat >"$T/agent.sh" <<AGENT
#!/bin/sh
# Open MPI calls its rsh agent as: AGENT HOST COMMAND...; enter HOST's namespaces and run the command.
host=\$1
shift
pid=\$(awk -v h="\$host" '\$1 == h {print \$3}' "$T/hosts/nodes")
[ -n "\$pid" ] || { echo "agent: no host \$host" >&2; exit 1; }
exec nsenter -t "\$pid" -n -u -- sh -c "\$*"
AGENT
chmod +x "$T/agent.sh"
printf 'node1 slots=1\nnode2 slots=1\n' >"$T/hostfile"
export OMPI_MCA_plm_rsh_agent="$T/agent.sh" OMPI_MCA_oob_tcp_if_include="$SLURM_NET.0/24" \
  OMPI_MCA_btl_tcp_if_include="$SLURM_NET.0/24" OMPI_MCA_btl=self,tcp,vader OMPI_MCA_pml=ob1 \
  OMPI_MCA_rmaps_base_display_map=1 # mpirun prints where it placed each rank into attempt-1.log
it_start_dpod --hostfile "$T/hostfile" --report-listen "$SLURM_NET.1:0"
id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set ranks=2 --set train.steps=4 --name hostfile)
"$DPOCTL_BIN" watch "$id" >/dev/null 2>&1 || it_fail "the job on the hostfile's hosts did not succeed"
it_check_steps_once "$id" 4
# Each host got one rank: mpirun's map says so.
for h in node1 node2; do
  grep -q "Data for node: $h" "$IT_JOBS/$id/attempt-1.log" || it_fail "no rank was placed on $h: $(head -n 30 "$IT_JOBS/$id/attempt-1.log")"
done
echo "PASS: --hostfile ran one rank on each of two hosts"
