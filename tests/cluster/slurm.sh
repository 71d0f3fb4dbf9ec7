#!/usr/bin/env bash
# A two-node Slurm on the emulated cluster: launch/slurm.sbatch, unchanged, with -N 2 under mpirun and srun --mpi=pmix trains,
# is preempted with USR1, is requeued and completes with --resume auto.
# Usage: bash tests/cluster/slurm.sh     (as root; installs slurm-wlm and munge if missing)
#   environment: VAE_DIST (the binary, default build/release/vae_dist), KEEP=1 keeps the temporary directory
#
# One slurmd per node namespace, each with its own NodeName and NodeAddr; slurmctld runs on node 1 (a head node that
# is also a compute node: the root namespace has no address on the bridge, so that nothing leaves the namespaces made
# here), munged on the machine (its socket is a file every namespace sees). Slurm's commands run on node 1.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster=$root/tests/cluster/cluster.sh
bin=$(realpath "${VAE_DIST:-$root/build/release/vae_dist}")
data=$root/data/mnist
[[ $(id -u) -eq 0 ]] || { echo "two-node slurm test: error: must run as root" >&2; exit 2; }
[[ -x "$bin" ]] || { echo "two-node slurm test: error: $bin not found; build it or set VAE_DIST" >&2; exit 2; }
[[ -f "$data/train-images-idx3-ubyte" ]] || { echo "two-node slurm test: error: no MNIST in $data" >&2; exit 2; }
# shellcheck source=tests/slurm/common.sh
source "$root/tests/slurm/common.sh"
install_slurm "two-node slurm test"

start=$SECONDS
name=s$(( $$ % 100000 ))
tmp=$(mktemp -d /tmp/vae-slurm2.XXXXXX)
chmod 755 "$tmp"
munged_started=0
cluster_up=0
passed=0
cleanup() {
  local status=$?
  set +e
  if ((cluster_up)); then
    for j in $(bash "$cluster" exec "$name" 1 squeue -h -o %i 2>/dev/null); do bash "$cluster" exec "$name" 1 scancel "$j"; done
    sleep 2
    bash "$cluster" down "$name"  # slurmctld, the slurmds and every job process live in the namespaces
  fi
  if ((munged_started)); then kill "$(cat /run/munge/munged.pid)" 2>/dev/null; fi
  if ((status)); then
    for f in "$tmp"/*.log "$tmp"/work/*.out; do [[ -f "$f" ]] && { echo "--- $f (last 30 lines)"; tail -n 30 "$f"; }; done
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then echo "two-node slurm test: kept $tmp"; else rm -rf "$tmp"; fi
  echo "two-node slurm test: $( ((status)) && echo FAILED || echo passed) in $((SECONDS - start)) s"
}
trap cleanup EXIT
fail() { echo "two-node slurm test: FAIL: $*" >&2; exit 1; }

start_munge

bash "$cluster" up "$name" 2
cluster_up=1
on() { local k=$1; shift; bash "$cluster" exec "$name" "$k" "$@"; }
slurm() { on 1 "$@"; }
slurm_cmd=(bash "$cluster" exec "$name" 1)

memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.4)}' /proc/meminfo)
mkdir -p "$tmp/state" "$tmp/work"
export SLURM_CONF=$tmp/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=vaetest2
SlurmctldHost=$name-node1(10.213.0.1)
SlurmdSpoolDir=$tmp/spool-%n
SlurmdPidFile=$tmp/slurmd-%n.pid
SlurmdLogFile=$tmp/slurmd-%n.log
$(common_slurm_conf)
NodeName=$name-node1 NodeAddr=10.213.0.1 CPUs=2 RealMemory=$memory State=UNKNOWN
NodeName=$name-node2 NodeAddr=10.213.0.2 CPUs=2 RealMemory=$memory State=UNKNOWN
PartitionName=test Nodes=$name-node[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
mkdir -p "$tmp/spool-$name-node1" "$tmp/spool-$name-node2"
# Both slurmstepds would make the same /tmp/spmix_appdir_UID_JOB.STEP: each node's own directory instead.
echo "PMIxCliTmpDirBase=/run/vae-cluster/node-local" >"$tmp/mpi.conf"

on 1 slurmctld -D -i -f "$SLURM_CONF" >"$tmp/slurmctld.out.log" 2>&1 &
for k in 1 2; do on "$k" slurmd -D -N "$name-node$k" -f "$SLURM_CONF" >"$tmp/slurmd$k.out.log" 2>&1 & done
for _ in $(seq 60); do
  [[ "$(slurm sinfo -h -o %T 2>/dev/null | sort -u)" == idle ]] && [[ "$(slurm sinfo -h -o %D 2>/dev/null)" == 2 ]] && break
  sleep 1
done
[[ "$(slurm sinfo -h -o %T | sort -u)" == idle ]] || fail "the nodes did not become idle: $(slurm sinfo 2>&1)"
echo "two-node slurm test: Slurm up on $name-node1 and $name-node2 after $((SECONDS - start)) s"

# Open MPI's traffic and its daemons' stay on the bridge; the job environment reaches the ranks through sbatch.
submit() {
  slurm env -C "$tmp/work" VAE_DIST="$bin" OMPI_MCA_btl_tcp_if_include=10.213.0.0/24 OMPI_MCA_oob_tcp_if_include=10.213.0.0/24 \
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 SLURM_CONF="$SLURM_CONF" \
    sbatch --parsable --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 "$@"
}

preempt() {
  local job run log epochs=12
  # Both ranks of the mpirun job sit on core 0 (--bind-to core binds each "node" alike on one machine), 5 s an epoch:
  # 6 epochs leave it 4 to be stopped in; the srun job's epochs take a second, so it keeps 12.
  [[ $1 == mpirun ]] && epochs=6
  job=$(LAUNCHER=$1 submit --job-name="two-$1" --export=ALL,LAUNCHER="$1" "$root/launch/slurm.sbatch" "$root/configs/smoke.ini" \
        --data-dir "$data" --progress never --epochs "$epochs" --train-limit 12000)
  run=$tmp/work/runs/two-$1-$job
  log=$tmp/work/vae_dist-$job.out
  # The header is printed before the first checkpoint, which the shared check waits for first.
  expect_preempted_and_resumed "$job" "$1 on 2 nodes" "$run" "$log"
  grep -q "2 ranks x 1 thread" "$log" || fail "$1 job: no 2-rank header in the log"
  grep -q "summed over 2 nodes" "$log" || fail "$1 job: the ranks are not on two nodes"
  passed=$((passed + 1))
}
for launcher in ${LAUNCHERS:-mpirun srun}; do preempt "$launcher"; done
echo "two-node slurm: $passed passed"
