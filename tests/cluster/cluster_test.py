#!/usr/bin/env python3
"""vae_dist on an emulated cluster (tests/cluster/cluster.sh): faults across nodes, resume across layouts, a lost link.

Usage: cluster_test.py VAE_DIST SOURCE_DIR CASE. Each case brings up its own cluster and takes it down on every exit path.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

BIN, SOURCE, CASE = sys.argv[1], sys.argv[2], sys.argv[3]
HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER = os.path.join(HERE, "cluster.sh")
DATA = os.path.join(SOURCE, "data", "mnist")
SMOKE = ["--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--progress", "never"]


class Cluster:
    """NODES namespaces on a bridge for the length of a with-block."""

    def __init__(self, nodes):
        self.name = "t%d" % (os.getpid() % 100000)
        self.nodes = nodes

    def __enter__(self):
        subprocess.run(["bash", CLUSTER, "up", self.name, str(self.nodes)], check=True,
                       env={**os.environ, "VAE_CLUSTER_OWNER": str(os.getpid())})
        return self

    def __exit__(self, *exc):
        subprocess.run(["bash", CLUSTER, "down", self.name], check=True)

    def pids(self, node):
        p = subprocess.run(["ip", "netns", "pids", f"vaec-{self.name}-n{node}"], capture_output=True, text=True)
        return [int(x) for x in p.stdout.split()]

    def start(self, np, ppn, *args):
        """mpirun of vae_dist on the cluster, in the background."""
        cmd = ["bash", CLUSTER, "mpirun", self.name, str(np), str(ppn), BIN] + list(args)
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, np, ppn, *args, timeout=240):
        p = self.start(np, ppn, *args)
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err

    def link(self, node, state):
        subprocess.run(["bash", CLUSTER, "link", self.name, str(node), state], check=True)

    def wait_all_gone(self, start, limit):
        """Seconds from start until no process is left on any node; fails past limit."""
        while any(self.pids(k) for k in range(1, self.nodes + 1)):
            assert time.monotonic() - start < limit, f"processes still running {limit} s after the fault: " + str(
                {k: self.pids(k) for k in range(1, self.nodes + 1)})
            time.sleep(0.2)
        return time.monotonic() - start


def our_errors(stderr):
    return [l for l in stderr.splitlines() if l.startswith("vae_dist")]


def metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []


def fault(kind, limit, *extra, expect_line=None):
    """2 nodes × 2 ranks, a fault on rank 3 (node 2) at step 20; every process on every node must be gone within limit."""
    with Cluster(2) as c, tempfile.TemporaryDirectory() as d:
        start = time.monotonic()
        code, out, err = c.run(4, 2, *SMOKE, "--run-dir", d, "--inject-fault", f"{kind}:20:3", *extra, timeout=limit + 60)
        seconds = c.wait_all_gone(start, limit)
        print(f"{kind}: exit {code} after {seconds:.1f} s")
        assert code != 0, f"exit {code}\n{err}"
        assert seconds <= limit, f"{seconds:.1f} s until every process exited"
        if expect_line:
            assert expect_line in err, err
        return code, err, metrics(d)


def case_fault_throw():
    fault("throw", 10, expect_line="vae_dist: rank 3: error: injected fault at step 20")


def case_fault_kill():
    fault("kill", 10)


def case_fault_nan():
    code, err, rows = fault("nan", 10)
    assert code == 3, f"exit {code}, expected 3\n{err}"
    lines = our_errors(err)
    assert len(lines) == 1 and "non-finite loss or gradient at step 20 on rank 3" in lines[0], lines
    assert rows == [], "an epoch finished after the failure"


def case_link_down():
    """Node 2's link goes down mid-epoch: the watchdog names what it waits on, and every process on both nodes is gone
    within 60 s with a non-zero exit; the checkpoint written before stays loadable."""
    os.environ["VAE_COMM_TIMEOUT"] = "10"  # cluster.sh mpirun sets the daemons' keepalive from it, as launch/*.sh do
    with Cluster(2) as c, tempfile.TemporaryDirectory() as d:
        args = SMOKE + ["--run-dir", d, "--epochs", "40", "--comm-timeout", "10"]
        p = c.start(4, 2, *args)
        # Down once the first epoch's checkpoint is on disk, so there is something to keep intact.
        ckpt = os.path.join(d, "checkpoints", "ckpt-e0001.h5")
        deadline = time.monotonic() + 120
        while not os.path.exists(ckpt):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "no first checkpoint after 120 s"
            time.sleep(0.1)
        time.sleep(0.5)
        c.link(2, "down")
        start = time.monotonic()
        timer = threading.Timer(90, p.kill)
        timer.start()
        out, err = p.communicate()
        timer.cancel()
        seconds = c.wait_all_gone(start, 60)
        print(f"link down: mpirun exit {p.returncode} after {seconds:.1f} s; {err.strip().splitlines()[:1]}")
        assert p.returncode not in (0, -9), f"exit {p.returncode}\n{err}"
        assert seconds <= 60, f"{seconds:.1f} s"
        lines = [l for l in our_errors(err) if "no communication progress for" in l]
        assert lines, f"no watchdog line\n{err}"
        assert "at step " in lines[0] and "phase " in lines[0] and "waiting on " in lines[0], lines[0]
        # The newest complete checkpoint loads and training goes on from it, on one rank.
        code = subprocess.run([BIN, *SMOKE, "--run-dir", d, "--resume", "auto", "--epochs", "41", "--max-steps", "1"],
                              capture_output=True, text=True, timeout=120)
        assert code.returncode == 0 and "resumed after epoch " in code.stdout, code.stdout + code.stderr


def case_resume_across_layouts():
    """A checkpoint of 2 nodes × 2 ranks resumes on one rank, and one rank's on 2 × 2: each matches the straight run."""
    with Cluster(2) as c, tempfile.TemporaryDirectory() as d:
        straight, a, b = (os.path.join(d, x) for x in ("straight", "a", "b"))
        code, _, err = c.run(4, 2, *SMOKE, "--run-dir", straight, "--epochs", "3")
        assert code == 0, err
        code, _, err = c.run(4, 2, *SMOKE, "--run-dir", a, "--epochs", "2")
        assert code == 0, err
        one = subprocess.run([BIN, *SMOKE, "--run-dir", a, "--epochs", "3", "--resume", "auto", "--threads", "2"],
                             capture_output=True, text=True, timeout=120)
        assert one.returncode == 0 and "resumed after epoch 2" in one.stdout, one.stdout + one.stderr
        one = subprocess.run([BIN, *SMOKE, "--run-dir", b, "--epochs", "2", "--threads", "2"], capture_output=True, text=True,
                             timeout=120)
        assert one.returncode == 0, one.stderr
        code, out, err = c.run(4, 2, *SMOKE, "--run-dir", b, "--epochs", "3", "--resume", "auto")
        assert code == 0 and "resumed after epoch 2" in out, out + err
        ref = metrics(straight)[-1]["test_elbo"]
        for run_dir in (a, b):
            got = metrics(run_dir)[-1]["test_elbo"]
            assert abs(got - ref) <= 1e-4 * abs(ref), (run_dir, got, ref)


def case_wire_bf16():
    """2 nodes × 2 ranks with the gradient sums in bf16 train as fp32 does, to within a fraction of a nat."""
    with Cluster(2) as c, tempfile.TemporaryDirectory() as d:
        elbo = {}
        for wire in ("fp32", "bf16"):
            code, out, err = c.run(4, 2, *SMOKE, "--run-dir", os.path.join(d, wire), "--wire", wire)
            assert code == 0 and ("summed over 2 nodes" + (" as bf16" if wire == "bf16" else "")) in out, out + err
            elbo[wire] = metrics(os.path.join(d, wire))[-1]["test_elbo"]
        print(elbo)
        assert elbo["bf16"] != elbo["fp32"], "the bf16 wire changed nothing: is it used?"
        assert abs(elbo["bf16"] - elbo["fp32"]) < 0.005 * elbo["fp32"], elbo


globals()["case_" + CASE]()
print("ok", CASE)
