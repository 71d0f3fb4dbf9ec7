#!/usr/bin/env bash
# An emulated cluster on this one machine: N network namespaces ("nodes") on a bridge, each with its own host name, and
# Open MPI launched across them by a small agent instead of ssh.
#
# Usage (as root):
#   cluster.sh up NAME NODES [RATE DELAY]   make cluster NAME (≤ 6 characters) with NODES nodes; RATE/DELAY shape every
#                                           node's link with tc (e.g. 10gbit 50us; a delay needs sch_netem), "-" for none
#   cluster.sh down NAME                    end the processes in its namespaces, then remove namespaces, veths, bridge
#   cluster.sh exec NAME NODE CMD...        run CMD on node NODE (1-based) under its host name
#   cluster.sh mpirun NAME NP PPN ARGS...   mpirun on node 1 for NP ranks, PPN per node, ARGS the program and its options
#                                           (NAME - : the cluster of the enclosing cluster.sh run)
#   cluster.sh link NAME NODE up|down       set node NODE's link to the bridge up or down (a cable pulled)
#   cluster.sh agent HOST CMD...            the plm_rsh_agent: runs Open MPI's daemon command on HOST's node
#   cluster.sh run NODES [RATE DELAY] -- CMD...
#                                           up, then CMD with VAE_CLUSTER set to the cluster's name, then down whatever
#                                           happens (the form ctest uses)
#
# Addresses are 10.213.0.K/24 on node K and exist only inside the namespaces made here; the bridge in the root
# namespace has no address, so nothing can leave the cluster.
set -euo pipefail

self=$(realpath "${BASH_SOURCE[0]}")
subnet=10.213.0

die() { echo "cluster: error: $*" >&2; exit 2; }
ns_of() { echo "vaec-$1-n$2"; }
host_of() { echo "$1-node$2"; }
bridge_of() { echo "vbr-$1"; }
veth_of() { echo "vv$1n$2"; }  # the root-side end; the node's end is eth0 inside its namespace
state_of() { echo "/run/vae-cluster/$1"; }
# Each node sees its own directory here, as a node's own /tmp would be (Slurm's PMIx plugin puts fixed names in it).
node_local=/run/vae-cluster/node-local

check_name() {
  [[ "$1" =~ ^[a-z0-9]{1,6}$ ]] || die "cluster name '$1' must be 1-6 lowercase letters or digits"
}

nodes_of() {
  local s
  s=$(state_of "$1")
  [[ -f "$s/nodes" ]] || die "no cluster named '$1' is up"
  cat "$s/nodes"
}

# A cluster whose owner (VAE_CLUSTER_OWNER when it was made: a test's process) has died was left by a SIGKILL, which no
# trap sees; taking it down before making another keeps its namespaces and bridge from piling up. Clusters made by hand
# have no owner and stay.
sweep_orphans() {
  local d owner
  for d in /run/vae-cluster/*/; do
    [[ -f "$d/owner" ]] || continue
    owner=$(cat "$d/owner")
    if [[ ! "$owner" =~ ^[0-9]+$ ]] || kill -0 "$owner" 2>/dev/null; then continue; fi
    echo "cluster: taking down '$(basename "$d")', left by process $owner, which has ended" >&2
    down "$(basename "$d")"
  done
}

up() {
  local name=$1 nodes=$2 rate=${3:--} delay=${4:--} k ns veth br s
  check_name "$name"
  [[ "$nodes" =~ ^[0-9]+$ && "$nodes" -ge 1 && "$nodes" -le 16 ]] || die "nodes must be 1-16, got '$nodes'"
  [[ $(id -u) -eq 0 ]] || die "must run as root (it makes network namespaces)"
  sweep_orphans
  s=$(state_of "$name")
  [[ -e "$s" ]] && die "cluster '$name' exists already ($s); take it down first"
  mkdir -p "$s"
  echo "$nodes" >"$s/nodes"
  if [[ -n "${VAE_CLUSTER_OWNER:-}" ]]; then echo "$VAE_CLUSTER_OWNER" >"$s/owner"; fi
  br=$(bridge_of "$name")
  ip link add "$br" type bridge
  ip link set "$br" up
  for ((k = 1; k <= nodes; k++)); do
    ns=$(ns_of "$name" "$k")
    veth=$(veth_of "$name" "$k")
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$br"
    ip link set "$veth" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$subnet.$k/24" dev eth0
    ip -n "$ns" link set eth0 up
    # A daemon with output still unsent to a lost peer waits out TCP's retransmissions, not its keepalive: 15 minutes
    # with the kernel's default of 15 retries, about 25 s with 6. On a real cluster the batch system fences a lost node.
    ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_retries2=6
    # Shaping each node's sending side shapes every packet between two nodes once. A delay needs sch_netem, which some
    # kernels lack (this one's Firecracker kernel among them): then only the rate, with a token bucket.
    if [[ "$delay" != - ]]; then
      ip netns exec "$ns" tc qdisc add dev eth0 root netem rate "$rate" delay "$delay" limit 100000 2>/dev/null ||
        die "this kernel has no sch_netem, so a link delay cannot be emulated; shape the rate alone (DELAY -)"
    elif [[ "$rate" != - ]]; then
      # A burst of at least rate / HZ, or the bucket cannot refill between ticks.
      ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 4mb latency 20ms
    fi
    echo "$subnet.$k slots=64" >>"$s/hostfile"
    echo "$subnet.$k $(host_of "$name" "$k")" >>"$s/hosts"
    mkdir -p "$s/local-$k" "$node_local"
  done
  # A node sees the others only when their links are up: wait for the bridge to forward (no traffic leaves it).
  for ((k = 2; k <= nodes; k++)); do
    for _ in $(seq 50); do
      ip netns exec "$(ns_of "$name" 1)" ping -c1 -W1 -q "$subnet.$k" >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
}

down() {
  local name=$1 nodes k ns pids s
  s=$(state_of "$name")
  [[ -f "$s/nodes" ]] || return 0
  nodes=$(cat "$s/nodes")
  # The processes in the namespaces first: they are ours (started through exec or the agent) and would otherwise
  # outlive their network.
  for sig in TERM KILL; do
    for ((k = 1; k <= nodes; k++)); do
      ns=$(ns_of "$name" "$k")
      read -r -a pids <<<"$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
      if ((${#pids[@]})); then kill "-$sig" "${pids[@]}" 2>/dev/null || true; fi
    done
    for _ in $(seq 30); do
      local left=0
      for ((k = 1; k <= nodes; k++)); do
        [[ -n "$(ip netns pids "$(ns_of "$name" "$k")" 2>/dev/null || true)" ]] && left=1
      done
      ((left)) || break
      sleep 0.1
    done
  done
  for ((k = 1; k <= nodes; k++)); do
    ip link del "$(veth_of "$name" "$k")" 2>/dev/null || true
    ip netns del "$(ns_of "$name" "$k")" 2>/dev/null || true
  done
  ip link del "$(bridge_of "$name")" 2>/dev/null || true
  rm -rf "$s"
}

# Runs a command on node K with the node's host name: a network namespace plus a UTS namespace of its own (Open MPI
# names shared-memory segments and session directories by host name), and the cluster's host names in an /etc/hosts of
# its own (bound in a private mount namespace; the machine's file is untouched). Not ip netns exec: it remounts /sys,
# which hides the cgroup hierarchy slurmd needs.
on_node() {
  local name=$1 k=$2
  shift 2
  # shellcheck disable=SC2016 # $0, $1 and $@ belong to the inner shell
  exec nsenter --net="/run/netns/$(ns_of "$name" "$k")" unshare --uts --mount --propagation private -- /bin/sh -c \
    'hostname "$0" && mount --bind "$1" /etc/hosts && mount --bind "$2" "$3" && shift 3 && exec "$@"' \
    "$(host_of "$name" "$k")" "$(state_of "$name")/hosts" "$(state_of "$name")/local-$k" "$node_local" "$@"
}

mpirun_on() {
  local name=$1 np=$2 ppn=$3 s
  [[ "$name" == - ]] && name=${VAE_CLUSTER:?cluster name - means the cluster of cluster.sh run}
  shift 3
  s=$(state_of "$name")
  [[ -f "$s/hostfile" ]] || die "no cluster named '$name' is up"
  local root_flags=()
  [[ $(id -u) -eq 0 ]] && root_flags=(--allow-run-as-root)
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 VAE_CLUSTER_NAME=$name
  # Keepalive on the daemons' own connections, as launch/*.sh set it for vae_dist's --comm-timeout T (VAE_COMM_TIMEOUT
  # here, default 30): with a link down the daemons learn that a peer is gone between T + 2 and 1.5·T + 2 seconds (not
  # Open MPI's default of 8 minutes), after the ranks' watchdogs have named what they wait on (at T) and before they end
  # themselves (at 2·T; an abort started then would wait for the lost daemon forever).
  local t=${VAE_COMM_TIMEOUT:-30}
  local keepalive=($(( (t + 1) / 2 )) 2 $(( t / 2 + 1 )))
  on_node "$name" 1 mpirun "${root_flags[@]}" --hostfile "$s/hostfile" -np "$np" --map-by "ppr:$ppn:node" --bind-to none \
    --mca plm_rsh_agent "$self agent" --mca plm_rsh_no_tree_spawn 1 \
    --mca btl tcp,vader,self --mca btl_tcp_if_include "$subnet.0/24" --mca oob_tcp_if_include "$subnet.0/24" \
    --mca oob_tcp_keepalive_time "${keepalive[0]}" --mca oob_tcp_keepalive_intvl "${keepalive[1]}" \
    --mca oob_tcp_keepalive_probes "${keepalive[2]}" "$@"
}

agent() {
  local host=$1 name k
  shift
  # Open MPI hands over the daemon's command line as ssh would, for a shell to parse.
  k=${host##*.}
  name=${VAE_CLUSTER_NAME:?the agent runs under cluster.sh mpirun}
  on_node "$name" "$k" /bin/sh -c "$*"
}

cmd=${1:-}
[[ -n "$cmd" ]] || die "usage: cluster.sh up|down|exec|mpirun|link|agent|run ..."
shift
case "$cmd" in
  up) up "$@" ;;
  down) check_name "$1"; down "$1" ;;
  exec) nodes_of "$1" >/dev/null; on_node "$@" ;;
  mpirun) mpirun_on "$@" ;;
  link)
    nodes_of "$1" >/dev/null
    ip link set "$(veth_of "$1" "$2")" "$3"
    ;;
  agent) agent "$@" ;;
  run)
    nodes=$1
    shift
    rate=- delay=-
    if [[ "${1:-}" != -- ]]; then rate=$1 delay=$2; shift 2; fi
    [[ "${1:-}" == -- ]] || die "usage: cluster.sh run NODES [RATE DELAY] -- CMD..."
    shift
    name=c$$
    name=${name:0:6}
    trap 'down "$name"' EXIT
    trap 'exit 130' INT TERM
    VAE_CLUSTER_OWNER=$$ up "$name" "$nodes" "$rate" "$delay"
    VAE_CLUSTER=$name "$@"
    ;;
  *) die "unknown command '$cmd'" ;;
esac
