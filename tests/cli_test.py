#!/usr/bin/env python3
"""End-to-end checks of the vae_dist executable under mpiexec: exit codes, one-line errors, no hangs, real training."""
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

BIN, SOURCE, CASE = sys.argv[1], sys.argv[2], sys.argv[3]
MPIEXEC = ["mpiexec", "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
DATA = os.path.join(SOURCE, "data", "mnist")


def run(ranks, *args, timeout=120):
    cmd = MPIEXEC + ["-n", str(ranks), BIN, "--progress", "never"] + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def our_errors(stderr):
    return [l for l in stderr.splitlines() if l.startswith("vae_dist")]


def expect_usage_error(ranks, args, needle):
    code, out, err = run(ranks, *args, timeout=60)
    lines = our_errors(err)
    assert code == 2, f"exit code {code}, expected 2\n{err}"
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def write_idx(path, magic, dims, payload):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload)


def case_help():
    code, out, _ = run(1, "--help")
    assert code == 0 and "--batch" in out and "--fast.beta-start" in out, out


def case_version():
    code, out, _ = run(2, "--version")
    assert code == 0 and out.startswith("vae_dist ") and out.count("vae_dist ") == 1, out  # rank 0 only
    assert "(unknown)" not in out or not os.path.isdir(os.path.join(SOURCE, ".git")), out


def case_bad_option():
    expect_usage_error(2, ["--bogus"], "vae_dist: error: unrecognised option '--bogus'")


def case_bad_value():
    expect_usage_error(2, ["--lr", "-1"], "option --lr: must be in (0, 1]")


def case_missing_data():
    expect_usage_error(2, ["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist/train-images-idx3-ubyte: no such file")


def case_batch_not_divisible():
    expect_usage_error(2, ["--data-dir", DATA, "--batch", "63"], "global batch 63 is not divisible by 2 ranks")


def case_corrupt_labels():
    with tempfile.TemporaryDirectory() as d:
        n = 32
        write_idx(os.path.join(d, "train-images-idx3-ubyte"), 0x803, [n, 28, 28], bytes(n * 784))
        write_idx(os.path.join(d, "train-labels-idx1-ubyte"), 0x801, [n], bytes([3] * (n - 1) + [10]))
        write_idx(os.path.join(d, "t10k-images-idx3-ubyte"), 0x803, [n, 28, 28], bytes(n * 784))
        write_idx(os.path.join(d, "t10k-labels-idx1-ubyte"), 0x801, [n], bytes(n))
        expect_usage_error(2, ["--data-dir", d, "--batch", "8"], "train-labels-idx1-ubyte: label 10 at index 31 is outside 0-9")


def case_smoke_real_mnist():
    with tempfile.TemporaryDirectory() as d:
        code, out, err = run(2, "--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--run-dir", d, "--profile",
                             timeout=600)
        assert code == 0, f"exit {code}\n{out}\n{err}"
        with open(os.path.join(d, "metrics.jsonl")) as f:
            rows = [json.loads(l) for l in f]
        assert len(rows) >= 2, rows
        first, last = rows[0]["test_elbo"], rows[-1]["test_elbo"]
        print(f"test -ELBO {first:.2f} -> {last:.2f} over {len(rows)} epochs")
        assert last < first, f"test -ELBO did not fall: {first} -> {last}"
        assert 60 < last < 250, f"implausible test -ELBO {last}"
        assert out.count("epoch ") >= len(rows), out  # one console line per epoch, from rank 0 only
        assert out.count("profile: ") == 1 and "allreduce wait" in out, out
        phases = ["time_data", "time_forward", "time_backward", "time_allreduce_wait", "time_update"]
        assert all(r[p] > 0 for r in rows for p in phases), rows


def case_shipped_configs():
    """Every configs/*.ini parses and trains: two steps each on a slice of MNIST, so a stale or misspelt option fails here."""
    names = sorted(n for n in os.listdir(os.path.join(SOURCE, "configs")) if n.endswith(".ini"))
    assert "conv.ini" in names and "binary-conv.ini" in names, names
    for name in names:
        with tempfile.TemporaryDirectory() as d:
            code, out, err = run(1, "--config", os.path.join(SOURCE, "configs", name), "--data-dir", DATA, "--run-dir", d,
                                 "--max-steps", "2", "--train-limit", "512", "--test-limit", "256", "--checkpoint-every", "0",
                                 "--threads", "1", timeout=300)
            assert code == 0, f"{name}: exit {code}\n{out}\n{err}"
            assert our_errors(err) == [], (name, err)
            ckpts = os.listdir(os.path.join(d, "checkpoints"))
            assert any(c.endswith(".h5") for c in ckpts), (name, ckpts)


def run_fault(fault, *extra, ranks=2):
    """Trains smoke.ini with a fault injected; returns (exit code, stdout, stderr, seconds until every process is gone)."""
    with tempfile.TemporaryDirectory() as d:
        marker = os.path.join(d, "run")
        start = time.monotonic()
        code, out, err = run(ranks, "--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--run-dir", marker,
                             "--inject-fault", fault, *extra, timeout=60)
        while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
            assert time.monotonic() - start < 30, "processes still running 30 s after the fault"
            time.sleep(0.1)
        seconds = time.monotonic() - start
        metrics = os.path.join(marker, "metrics.jsonl")
        rows = [json.loads(l) for l in open(metrics)] if os.path.exists(metrics) else []
    return code, out, err, seconds, rows


def case_fault_throw():
    code, out, err, seconds, _ = run_fault("throw:5:1")
    assert code != 0, f"exit {code}"
    assert "vae_dist: rank 1: error: injected fault at step 5" in err, err
    assert seconds < 10, f"{seconds:.1f} s until every process exited"


def case_fault_kill():
    code, out, err, seconds, _ = run_fault("kill:5:1")
    assert code != 0, f"exit {code}"
    assert seconds < 10, f"{seconds:.1f} s until every process exited"


def expect_nan_stop(*extra):
    """A NaN in rank 1's loss gradient at step 5: every rank stops with exit 3 and one line naming the step and the rank."""
    code, out, err, seconds, rows = run_fault("nan:5:1", *extra)
    assert code == 3, f"exit {code}, expected 3\n{err}"
    lines = our_errors(err)
    assert len(lines) == 1 and "non-finite loss or gradient at step 5 on rank 1" in lines[0], lines
    assert rows == [], "an epoch finished after the failure"
    assert seconds < 10, f"{seconds:.1f} s"


def case_fault_nan_stop():
    expect_nan_stop()


def case_fault_nan_stop_allreduce():
    """The same through the bucketed allreduce of multi-node jobs: the flag allreduce names the rank."""
    expect_nan_stop("--node-reduce", "mpi")


def case_fault_nan_stop_bf16():
    """The same in bf16: the products read the loss gradient in the bf16 forms the loss writes beside it."""
    expect_nan_stop("--precision", "bf16")


def case_fault_nan_skip():
    code, out, err, seconds, rows = run_fault("nan:5:1", "--nan-policy", "skip", "--epochs", "1")
    assert code == 0, f"exit {code}\n{err}"
    assert [r["skipped_steps"] for r in rows] == [1], rows
    assert all(r["test_elbo"] == r["test_elbo"] and r["train_loss"] == r["train_loss"] for r in rows), rows  # no NaN


def case_preempt_usr1():
    """SIGUSR1 to mpirun: the ranks agree at a step boundary, rank 0 writes a checkpoint, all exit 4; --resume auto then
    finishes the run with the same final test -ELBO as a run never interrupted."""
    args = ["--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--epochs", "4"]
    with tempfile.TemporaryDirectory() as d:
        straight, stopped = os.path.join(d, "straight"), os.path.join(d, "stopped")
        code, out, err = run(2, *args, "--run-dir", straight)
        assert code == 0, err
        p = subprocess.Popen(MPIEXEC + ["-n", "2", BIN, "--progress", "never", *args, "--run-dir", stopped], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(stopped, "checkpoints", "ckpt-e0001.h5")):
            assert time.monotonic() < deadline and p.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.02)
        p.send_signal(signal.SIGUSR1)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 4, f"exit {p.returncode}, expected 4\n{err}"
        assert "stopped by a signal at step" in err, err
        partial = [f for f in os.listdir(os.path.join(stopped, "checkpoints")) if "-s" in f and f.endswith(".h5")]
        assert len(partial) == 1, os.listdir(os.path.join(stopped, "checkpoints"))
        code, out, err = run(2, *args, "--run-dir", stopped, "--resume", "auto")
        assert code == 0 and "resumed after epoch" in out, out + err
        last = lambda run_dir: json.loads(open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()[-1])
        assert last(stopped)["epoch"] == 4, last(stopped)
        assert last(stopped)["test_elbo"] == last(straight)["test_elbo"], (last(stopped), last(straight))


def case_sample():
    """vae_sample draws chosen digits from a checkpoint as a PNG of the right size, the same for the same seed."""
    sample = os.path.join(os.path.dirname(BIN), "vae_sample")
    with tempfile.TemporaryDirectory() as d:
        code, out, err = run(1, "--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--run-dir", d, "--epochs", "1")
        assert code == 0, err
        ckpt = os.path.join(d, "checkpoints", "ckpt-e0001.h5")
        outs = []
        for i, seed in enumerate(["5", "5", "6"]):
            png = os.path.join(d, f"s{i}.png")
            p = subprocess.run([sample, "--checkpoint", ckpt, "--digits", "3,7", "--count", "4", "--seed", seed, "--out", png],
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stderr
            data = open(png, "rb").read()
            assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
            assert struct.unpack(">II", data[16:24]) == (4 * 28, 2 * 28), struct.unpack(">II", data[16:24])  # width, height
            outs.append(data)
        assert outs[0] == outs[1] and outs[0] != outs[2], "the seed does not decide the samples"
        p = subprocess.run([sample, "--checkpoint", ckpt, "--digits", "12"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and p.stderr.strip() == "vae_sample: error: option --digits: 12 is not a digit", p.stderr

        # The same draw into HDF5: images [8 × 28 × 28], one-hot labels (rows of 3, then of 7), the grid an HDF5 image.
        h5 = os.path.join(d, "s.h5")
        p = subprocess.run([sample, "--checkpoint", ckpt, "--digits", "3,7", "--count", "4", "--seed", "5", "--h5", h5],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and not os.path.exists(os.path.join(d, "samples.png")), p.stderr
        header = subprocess.run(["h5dump", "-H", h5], capture_output=True, text=True, timeout=60).stdout
        assert "( 8, 28, 28 )" in header and "( 8, 10 )" in header and "( 56, 112 )" in header, header
        image_class = subprocess.run(["h5dump", "-a", "/samples/grid/CLASS", h5], capture_output=True, text=True, timeout=60).stdout
        assert '"IMAGE"' in image_class, image_class
        labels = subprocess.run(["h5dump", "-w", "0", "-y", "-d", "/samples/labels", h5], capture_output=True, text=True, timeout=60).stdout
        values = [float(v) for v in labels.split("DATA {")[1].split("}")[0].replace(",", " ").split()]
        hot = [row.index(1.0) for row in (values[i * 10:(i + 1) * 10] for i in range(8))]
        assert hot == [3] * 4 + [7] * 4 and sum(values) == 8, values


def case_traverse():
    """vae_sample --traverse: one row per latent dimension, its value swept over the columns while the others stay fixed;
    a conditional model needs its digit, and a dimension it does not have is a one-line error."""
    sample = os.path.join(os.path.dirname(BIN), "vae_sample")
    with tempfile.TemporaryDirectory() as d:
        code, out, err = run(1, "--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--run-dir", d, "--epochs", "1")
        assert code == 0, err
        ckpt = os.path.join(d, "checkpoints", "ckpt-e0001.h5")
        h5 = os.path.join(d, "t.h5")
        p = subprocess.run([sample, "--checkpoint", ckpt, "--traverse", "0,5", "--digits", "3", "--steps", "7", "--out", os.path.join(d, "t.png"),
                            "--h5", h5], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert png_size(os.path.join(d, "t.png")) == (7 * 28, 2 * 28), png_size(os.path.join(d, "t.png"))
        dump = subprocess.run(["h5dump", "-w", "0", "-y", "-d", "/samples/images", h5], capture_output=True, text=True, timeout=60).stdout
        pixels = [int(v) for v in dump.split("DATA {")[1].split("}")[0].replace(",", " ").split()]
        images = [pixels[i * 784:(i + 1) * 784] for i in range(14)]
        assert len(pixels) == 14 * 784, len(pixels)
        # the sweep changes each row's digit, and two dimensions swept from one draw differ
        for row in range(2):
            assert images[row * 7] != images[row * 7 + 6], f"row {row}: the sweep left the digit unchanged"
        assert images[0] != images[7], "dimensions 0 and 5 at -3 decode alike"
        kind = subprocess.run(["h5dump", "-a", "/kind", h5], capture_output=True, text=True, timeout=60).stdout
        assert '"traverse"' in kind, kind
        for args, message in ((["--traverse", "0"], "is a conditional model; name the digit to draw with --digits D"),
                              (["--traverse", "16", "--digits", "3"], "option --traverse: 16 is not among the model's 16 latent dimensions"),
                              (["--traverse", "0", "--digits", "3,4"], "option --digits: a traversal draws one digit, got 2"),
                              (["--traverse", "0", "--grid"], "give exactly one of --grid, --digits, --interpolate or --traverse")):
            p = subprocess.run([sample, "--checkpoint", ckpt, "--out", os.path.join(d, "x.png")] + args, capture_output=True, text=True, timeout=60)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1 and message in lines[0], (args, p.returncode, p.stderr)


def case_kill_while_writing():
    """A process killed with SIGKILL while it writes a checkpoint leaves the previous one loadable, and --resume auto
    continues from the newest complete checkpoint, never from the half-written file."""
    # Wide layers make each checkpoint ~140 MB, so the write lasts long enough to be caught in the act.
    args = [BIN, "--progress", "never", "--data-dir", DATA, "--hidden", "2048,2048", "--latent", "32", "--batch", "64",
            "--train-limit", "640", "--test-limit", "200", "--threads", "1"]
    with tempfile.TemporaryDirectory() as d:
        ckpts = os.path.join(d, "checkpoints")
        p = subprocess.Popen(args + ["--run-dir", d, "--epochs", "6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while not os.path.exists(os.path.join(ckpts, "ckpt-e0001.h5")):
            assert time.monotonic() < deadline and p.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.005)
        half = []
        while not half:
            assert time.monotonic() < deadline and p.poll() is None, "never saw a checkpoint being written"
            half = [f for f in os.listdir(ckpts) if ".h5.tmp." in f]
        p.kill()
        p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL, p.returncode
        complete = sorted(f for f in os.listdir(ckpts) if f.endswith(".h5"))
        assert os.path.exists(os.path.join(ckpts, half[0])) or complete, "the killed writer left nothing"
        newest = int(complete[-1][6:10])
        code = subprocess.run([os.path.join(os.path.dirname(BIN), "vae_sample"), "--checkpoint", os.path.join(ckpts, complete[-1]),
                               "--grid", "--out", os.path.join(d, "g.png")], capture_output=True, text=True, timeout=60)
        assert code.returncode == 0, code.stderr
        r = subprocess.run(args + ["--run-dir", d, "--epochs", str(newest + 1), "--resume", "auto"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0 and f"resumed after epoch {newest}" in r.stdout, r.stdout + r.stderr
        assert not [f for f in os.listdir(ckpts) if ".h5.tmp." in f], "the half-written file was left behind after the resume"


def case_checkpoint_steps():
    """--checkpoint-every-steps adds checkpoints inside epochs; --keep-checkpoints keeps the newest by (epoch, step), not by
    name; resuming from a step checkpoint ends where the uninterrupted run ended."""
    args = ["--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--epochs", "2", "--checkpoint-every-steps", "40"]
    with tempfile.TemporaryDirectory() as d:
        code, out, err = run(2, *args, "--run-dir", d)
        assert code == 0, err
        ckpts = os.path.join(d, "checkpoints")
        kept = sorted(f for f in os.listdir(ckpts) if f.endswith(".h5"))  # 93 steps an epoch: steps 40, 80 | 120, 160
        assert kept == ["ckpt-e0001-s000000120.h5", "ckpt-e0001-s000000160.h5", "ckpt-e0002.h5"], kept
        straight = json.loads(open(os.path.join(d, "metrics.jsonl")).read().splitlines()[-1])
        os.remove(os.path.join(ckpts, "ckpt-e0002.h5"))
        code, out, err = run(2, *args, "--run-dir", d, "--resume", "auto")
        assert code == 0 and "resumed after epoch 1, step 160" in out, out + err
        resumed = json.loads(open(os.path.join(d, "metrics.jsonl")).read().splitlines()[-1])
        assert resumed["epoch"] == 2 and resumed["test_elbo"] == straight["test_elbo"], (resumed, straight)


def run_eval(ranks, *args, timeout=300):
    cmd = MPIEXEC + ["-n", str(ranks), os.path.join(os.path.dirname(BIN), "vae_eval"), "--data-dir", DATA] + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    return struct.unpack(">II", data[16:24])


def case_eval():
    """vae_eval on 2 ranks reproduces the trainer's test -ELBO, puts the importance-weighted NLL below it, and reports
    SSIM, errors and conditional accuracy per digit, as a table and as JSON, with the two PNGs."""
    with tempfile.TemporaryDirectory() as d:
        code, out, err = run(1, "--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--run-dir", d, "--epochs", "2")
        assert code == 0, err
        trained = json.loads(open(os.path.join(d, "metrics.jsonl")).read().splitlines()[-1])
        out_json, recon, samples, misread = (os.path.join(d, n) for n in ("eval.json", "recon.png", "samples.png", "misread.png"))
        code, out, err = run_eval(2, "--checkpoint", os.path.join(d, "checkpoints", "ckpt-e0002.h5"), "--test-limit", "2000", "--iw-samples", "64",
                                  "--samples-per-digit", "20", "--json", out_json, "--recon-png", recon, "--samples-png", samples,
                                  "--misread-png", misread)
        assert code == 0, out + err
        r = json.loads(open(out_json).read())
        assert r["images"] == 2000 and r["ranks"] == 2 and not r["binarized"], r
        assert abs(r["test_elbo"] - trained["test_elbo"]) <= 1e-6 * trained["test_elbo"], (r["test_elbo"], trained["test_elbo"])
        assert r["iw_nll"] < r["test_elbo"], r
        assert 0 < r["ssim"] < 1 and 0 < r["mse_per_pixel"] < 1 and 0 < r["bce_per_pixel"] < 1, r
        assert sorted(r["ssim_per_digit"]) == [str(i) for i in range(10)], r
        assert 0 <= r["conditional_accuracy"] <= 1 and r["classifier_test_accuracy"] >= 0.985, r
        assert abs(sum(r["conditional_accuracy_per_digit"].values()) / 10 - r["conditional_accuracy"]) < 1e-9, r
        assert "test -ELBO" in out and "IW NLL, k = 64" in out and "conditional accuracy" in out, out
        # the latent usage: KL per dimension adding up to the test KL, the active units among the 16 dimensions
        assert len(r["kl_per_dim"]) == 16 and len(r["posterior_mean_variance_per_dim"]) == 16, r
        assert abs(sum(r["kl_per_dim"]) - r["test_kl"]) <= 1e-4 * r["test_kl"], (sum(r["kl_per_dim"]), r["test_kl"])
        assert r["active_units"] == sum(v > 0.01 for v in r["posterior_mean_variance_per_dim"]) and 0 < r["active_units"] <= 16, r
        assert "active units" in out, out
        # the Fréchet distance of the 200 generated digits from the 10,000 test images' features
        assert r["frechet_distance"] > 0 and r["frechet_generated"] == 200 and r["frechet_test_images"] == 10000, r
        # every misread sample is counted once, under the digit asked for and the digit read (never the same)
        for digit, accuracy in r["conditional_accuracy_per_digit"].items():
            read_as = r["misread_as"][digit]
            assert digit not in read_as and round(sum(read_as.values())) == round(20 * (1 - accuracy)), (digit, accuracy, read_as)
        assert png_size(recon) == (280, 560) and png_size(samples) == (560, 280), (png_size(recon), png_size(samples))
        assert png_size(misread) == (560, 280), png_size(misread)


def case_eval_binarized():
    """An unconditional model on dynamically binarised MNIST: vae_eval binarises the test set as the trainer did (the same
    -ELBO), and, with no label to ask for, reports no conditional accuracy."""
    with tempfile.TemporaryDirectory() as d:
        code, out, err = run(2, "--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--run-dir", d, "--epochs", "1",
                             "--binarize", "dynamic", "--conditional", "off")
        assert code == 0, err
        trained = json.loads(open(os.path.join(d, "metrics.jsonl")).read().splitlines()[-1])
        out_json = os.path.join(d, "eval.json")
        code, out, err = run_eval(1, "--checkpoint", os.path.join(d, "checkpoints", "ckpt-e0001.h5"), "--test-limit", "2000", "--iw-samples", "8",
                                  "--samples-per-digit", "20", "--json", out_json)
        assert code == 0, out + err
        r = json.loads(open(out_json).read())
        assert r["binarized"] and "conditional_accuracy" not in r, r
        # an unconditional model's samples still have a Fréchet distance: 10 × 20 of them, each its own noise
        assert r["frechet_distance"] > 0 and r["frechet_generated"] == 200, r
        assert abs(r["test_elbo"] - trained["test_elbo"]) <= 1e-6 * trained["test_elbo"], (r["test_elbo"], trained["test_elbo"])
        code, out, err = run_eval(1, "--checkpoint", os.path.join(d, "checkpoints", "ckpt-e0001.h5"), "--test-limit", "2000", "--binarize", "none",
                                  "--iw-samples", "0", "--json", out_json)
        assert code == 0 and not json.loads(open(out_json).read())["binarized"], out + err


def case_eval_errors():
    """Bad inputs to vae_eval: one line naming the file or option, exit 2, on every rank count."""
    with tempfile.TemporaryDirectory() as d:
        junk = os.path.join(d, "junk.h5")
        open(junk, "wb").write(b"not hdf5")
        for args, needle in [(["--checkpoint", junk], junk + ": not an HDF5 file"),
                             (["--checkpoint", junk, "--iw-samples", "-1"], "option --iw-samples: must be in 0-1000000"),
                             (["--iw-samples", "3"], "option --checkpoint is required")]:
            code, out, err = run_eval(2, *args)
            lines = [l for l in err.splitlines() if l.startswith("vae_eval")]
            assert code == 2 and len(lines) == 1 and needle in lines[0], (code, err)
        code, out, err = run(1, "--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--run-dir", d, "--epochs", "1")
        assert code == 0, err
        code, out, err = run_eval(1, "--checkpoint", os.path.join(d, "checkpoints", "ckpt-e0001.h5"), "--classifier", junk)
        lines = [l for l in err.splitlines() if l.startswith("vae_eval")]
        assert code == 2 and lines == [f"vae_eval: error: {junk}: not an HDF5 file (truncated or corrupt?)"], err


def case_kfold():
    """scripts/kfold.py trains every fold and prints the mean and spread of the validation -ELBO."""
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([sys.executable, os.path.join(SOURCE, "scripts", "kfold.py"), "--k", "3", "--run-dir", d, "--vae-dist", BIN, "--",
                            "--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA, "--epochs", "1"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        lines = p.stdout.splitlines()
        assert [l.split(":")[0] for l in lines[:3]] == ["fold 0", "fold 1", "fold 2"] and lines[3].startswith("3-fold validation -ELBO: "), lines
        folds = [json.loads(open(os.path.join(d, f"fold-{i}", "metrics.jsonl")).read().splitlines()[-1])["val_elbo"] for i in range(3)]
        assert len(set(folds)) == 3 and all(v > 0 for v in folds), folds


def case_resume_other_rank_count():
    """State is stored unsharded: 2 ranks for 2 epochs, then 1 rank resumes to 3; the result matches 2 ranks straight
    within float rounding. A half-written file (a killed writer's temporary) is never picked."""
    args = ["--config", os.path.join(SOURCE, "configs", "smoke.ini"), "--data-dir", DATA]
    with tempfile.TemporaryDirectory() as d:
        straight, moved = os.path.join(d, "straight"), os.path.join(d, "moved")
        code, out, err = run(2, *args, "--run-dir", straight, "--epochs", "3")
        assert code == 0, err
        code, out, err = run(2, *args, "--run-dir", moved, "--epochs", "2")
        assert code == 0, err
        with open(os.path.join(moved, "checkpoints", "ckpt-e0002.h5.tmp.12345"), "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n" + bytes(100))  # what a writer killed early leaves
        code, out, err = run(1, *args, "--run-dir", moved, "--epochs", "3", "--resume", "auto")
        assert code == 0 and "resumed after epoch 2" in out, out + err
        last = lambda run_dir: json.loads(open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()[-1])
        a, b = last(straight)["test_elbo"], last(moved)["test_elbo"]
        assert abs(a - b) <= 1e-4 * abs(a), (a, b)


SAMPLE = os.path.join(os.path.dirname(BIN), "vae_sample")
EVAL = os.path.join(os.path.dirname(BIN), "vae_eval")
SMOKE = os.path.join(SOURCE, "configs", "smoke.ini")


def smoke_checkpoint(d, *extra):
    """Trains smoke.ini for one epoch into d on one rank; returns the checkpoint."""
    code, out, err = run(1, "--config", SMOKE, "--data-dir", DATA, "--run-dir", d, "--epochs", "1", *extra)
    assert code == 0, out + err
    return os.path.join(d, "checkpoints", "ckpt-e0001.h5")


def in_terminal(cmd, timeout=300, env=None):
    """Runs cmd with its output on a fresh pseudo-terminal, as a user at a terminal would; returns (exit code, output)."""
    import pty
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvpe(cmd[0], cmd, env or os.environ)
        finally:
            os._exit(127)
    out, deadline = b"", time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"{cmd} did not finish in {timeout} s"
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def case_config_directory():
    with tempfile.TemporaryDirectory() as d:
        expect_usage_error(1, ["--config", d], f"{d}: is a directory, not a config file")


def case_config_binary():
    """A config file of junk: the message shows its bytes escaped and cut, so it stays one readable line."""
    with tempfile.TemporaryDirectory() as d:
        junk = os.path.join(d, "junk.ini")
        with open(junk, "wb") as f:
            f.write(b"\x1b[31m\x07" + bytes(range(0x80, 0x100)) * 8 + b"\n")
        code, out, err = run(1, "--config", junk, timeout=60)
        assert code == 2, err
        [line] = our_errors(err)
        assert line.startswith(f"vae_dist: error: {junk}: "), line
        assert line.isprintable() and "\\x1b[31m\\x07\\x80\\x81" in line, line
        assert len(line) < 300 and "bytes)" in line, line


def case_idx_directory():
    with tempfile.TemporaryDirectory() as d:
        for f in ["train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
            os.symlink(os.path.join(DATA, f), os.path.join(d, f))
        os.mkdir(os.path.join(d, "train-images-idx3-ubyte"))
        expect_usage_error(1, ["--data-dir", d], "train-images-idx3-ubyte: is a directory, not an IDX file")


def case_idx_dimensions():
    """Images of another size are named as such, before their length is checked."""
    with tempfile.TemporaryDirectory() as d:
        images = os.path.join(d, "images")
        write_idx(images, 0x803, [10, 27, 28], bytes(10 * 27 * 28))
        expect_usage_error(1, ["--data-dir", DATA, "--train-images", images], f"{images}: images are 27x28, expected 28x28")


def case_threads_warning():
    """More threads than cores on a node: one warning line, and the run goes on."""
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as d:
        code, out, err = run(1, "--config", SMOKE, "--data-dir", DATA, "--run-dir", d, "--max-steps", "2", "--threads", str(cores + 1))
        assert code == 0, err
        lines = [l for l in err.splitlines() if l.startswith("vae_dist")]
        assert len(lines) == 1 and f"1 rank x {cores + 1} threads = {cores + 1} threads on {cores} cores" in lines[0], err
        code, out, err = run(1, "--config", SMOKE, "--data-dir", DATA, "--run-dir", d, "--max-steps", "2", "--threads", "1")
        assert code == 0 and "warning" not in err, err


def case_sample_count():
    """Any --count: the samples stream into HDF5 in bounded memory, sample i the same as in a smaller draw."""
    import resource
    with tempfile.TemporaryDirectory() as d:
        ckpt = smoke_checkpoint(d)
        big, small = os.path.join(d, "big.h5"), os.path.join(d, "small.h5")
        # The largest child's peak so far: after the small draw, the baseline of the process itself.
        p = subprocess.run([SAMPLE, "--checkpoint", ckpt, "--digits", "4", "--count", "3", "--h5", small], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        baseline_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        n = 120000  # 94 MB of images: more than the draw may hold
        # Under AddressSanitizer freed memory waits in a quarantine of 256 MB by default: a small one measures the draw.
        env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8")
        p = subprocess.run([SAMPLE, "--checkpoint", ckpt, "--digits", "4", "--count", str(n), "--h5", big], capture_output=True,
                           text=True, timeout=600, env=env)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        assert p.returncode == 0 and f"wrote {n} samples" in p.stdout, p.stderr
        assert peak_mb < baseline_mb + 50, f"peak {peak_mb:.0f} MB for {n} samples, {baseline_mb:.0f} MB for 3"
        dump = lambda f, count: subprocess.run(["h5dump", "-w", "0", "-y", "-d", "/samples/images", "-s", "0,0,0", "-c", f"{count},28,28", f],
                                               capture_output=True, text=True, timeout=120).stdout.split("DATA {")[1]
        assert dump(big, 3) == dump(small, 3), "sample i differs between a draw of 3 and a draw of many"
        header = subprocess.run(["h5dump", "-H", big], capture_output=True, text=True, timeout=60).stdout
        assert f"( {n}, 28, 28 )" in header and f"( {n}, 10 )" in header and "grid_omitted" in header, header
        p = subprocess.run([SAMPLE, "--checkpoint", ckpt, "--digits", "4", "--count", "20000", "--out", os.path.join(d, "x.png")],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "a PNG shows at most 10000 samples, asked for 20000" in p.stderr, p.stderr


def case_classes_from_data():
    """Labels 0-4: a five-class model, stored so; every tool draws five rows and refuses a sixth digit."""
    with tempfile.TemporaryDirectory() as d:
        n = 640
        pixels = open(os.path.join(DATA, "train-images-idx3-ubyte"), "rb").read()[16:16 + n * 784]
        labels = bytes(open(os.path.join(DATA, "train-labels-idx1-ubyte"), "rb").read()[8:8 + n])
        five = bytes(l % 5 for l in labels)
        write_idx(os.path.join(d, "train-images-idx3-ubyte"), 0x803, [n, 28, 28], pixels)
        write_idx(os.path.join(d, "train-labels-idx1-ubyte"), 0x801, [n], five)
        write_idx(os.path.join(d, "t10k-images-idx3-ubyte"), 0x803, [n, 28, 28], pixels)
        write_idx(os.path.join(d, "t10k-labels-idx1-ubyte"), 0x801, [n], five)
        run_dir = os.path.join(d, "run")
        code, out, err = run(2, "--config", SMOKE, "--data-dir", d, "--run-dir", run_dir, "--epochs", "1", "--train-limit", "0",
                             "--test-limit", "0")
        assert code == 0, out + err
        ckpt = os.path.join(run_dir, "checkpoints", "ckpt-e0001.h5")
        classes = subprocess.run(["h5dump", "-a", "/model/classes", ckpt], capture_output=True, text=True, timeout=60).stdout
        assert "(0): 5" in classes, classes
        png = open(os.path.join(run_dir, "checkpoints", "ckpt-e0001.png"), "rb").read()
        assert struct.unpack(">II", png[16:24]) == (280, 5 * 28), struct.unpack(">II", png[16:24])
        grid = os.path.join(d, "grid.png")
        p = subprocess.run([SAMPLE, "--checkpoint", ckpt, "--grid", "--out", grid], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and struct.unpack(">II", open(grid, "rb").read()[16:24]) == (280, 140), p.stderr
        p = subprocess.run([SAMPLE, "--checkpoint", ckpt, "--digits", "7"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and p.stderr.strip() == "vae_sample: error: option --digits: 7 is not among the model's 5 classes", p.stderr
        js = os.path.join(d, "eval.json")
        p = subprocess.run(MPIEXEC + ["-n", "1", EVAL, "--checkpoint", ckpt, "--data-dir", d, "--iw-samples", "0", "--samples-per-digit", "10",
                                      "--json", js, "--progress", "never"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        result = json.load(open(js))
        assert sorted(result["conditional_accuracy_per_digit"]) == ["0", "1", "2", "3", "4"], result
        assert sorted(result["ssim_per_digit"]) == ["0", "1", "2", "3", "4"], result
        expect_usage_error(1, ["--config", SMOKE, "--data-dir", d, "--classes", "4", "--train-limit", "0", "--test-limit", "0"],
                           "label 4 at index")
        expect_usage_error(1, ["--config", SMOKE, "--data-dir", DATA, "--classes", "11"], "option --classes: must be in 0-10, got 11")


def case_stale_temporary_first():
    """A killed writer's temporary takes space the next checkpoint needs: it is removed before the write, which then fits."""
    assert os.geteuid() == 0, "this test mounts a small tmpfs (a full disk) and needs root"
    with tempfile.TemporaryDirectory() as d:
        size = os.path.getsize(smoke_checkpoint(os.path.join(d, "probe")))
        disk = os.path.join(d, "disk")
        os.mkdir(disk)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.7) // 4096 * 4096 + 65536}", "tmpfs", disk], check=True)
        try:
            os.makedirs(os.path.join(disk, "checkpoints"))
            with open(os.path.join(disk, "checkpoints", "ckpt-e0001.h5.tmp.99999"), "wb") as f:
                f.write(bytes(int(size * 0.9)))
            code, out, err = run(1, "--config", SMOKE, "--data-dir", DATA, "--run-dir", disk, "--epochs", "1")
            assert code == 0, out + err
            left = sorted(os.listdir(os.path.join(disk, "checkpoints")))
            assert left == ["ckpt-e0001.h5", "ckpt-e0001.png"], left
        finally:
            subprocess.run(["umount", disk], check=True)


def case_progress_terminal():
    """The live line shows for one process started by hand at a terminal, and for launch/local.sh at a terminal; not
    when the output is a pipe."""
    with tempfile.TemporaryDirectory() as d:
        # Wide layers, so the epoch's 93 steps last the seconds a live line needs to be drawn (it is drawn half a second
        # into an epoch, and two ranks ran 60 steps of 1024-wide layers in 0.5 s on 2026-12-07).
        args = ["--config", SMOKE, "--data-dir", DATA, "--epochs", "1", "--hidden", "2048,2048"]
        code, out = in_terminal([BIN] + args + ["--run-dir", os.path.join(d, "a"), "--threads", "1"])
        assert code == 0 and "\r\x1b[K  epoch 1  step" in out, out
        env = dict(os.environ, RANKS="2", THREADS="1", VAE_DIST=BIN)
        code, out = in_terminal(["bash", os.path.join(SOURCE, "launch", "local.sh")] + args + ["--run-dir", os.path.join(d, "b")], env=env)
        assert code == 0 and "\r\x1b[K  epoch 1  step" in out, out
        p = subprocess.run([BIN] + args + ["--run-dir", os.path.join(d, "c")], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "\x1b[K" not in p.stdout, p.stdout


def case_eval_progress():
    """vae_eval draws the same live line (images done, rate, time left) at a terminal."""
    with tempfile.TemporaryDirectory() as d:
        ckpt = smoke_checkpoint(d)
        code, out = in_terminal([EVAL, "--checkpoint", ckpt, "--data-dir", DATA, "--test-limit", "300", "--iw-samples", "200",
                                 "--samples-per-digit", "0"])
        assert code == 0 and "/300 images" in out and "images/s  ETA" in out and "test -ELBO" in out.replace("−", "-"), out


def case_agreed_error_exit():
    """An error every rank agrees on ends with a normal exit: no MPI_Abort, exit 2; through launch/local.sh only our line."""
    code, out, err = run(2, "--batch", "0", timeout=60)
    assert code == 2 and "MPI_ABORT" not in err and len(our_errors(err)) == 1, err
    env = dict(os.environ, RANKS="2", VAE_DIST=BIN)
    p = subprocess.run(["bash", os.path.join(SOURCE, "launch", "local.sh"), "--batch", "0"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2 and p.stderr == "vae_dist: error: option --batch: must be positive, got 0\n", repr(p.stderr)
    # Everything else mpirun says still gets through: here, a crash.
    p = subprocess.run(["bash", os.path.join(SOURCE, "launch", "local.sh"), "--inject-fault", "kill:2", "--config", SMOKE, "--data-dir", DATA,
                        "--run-dir", tempfile.mkdtemp()], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode != 0 and "signal" in p.stderr, p.stderr


def case_hostile_files():
    """Checkpoints on which libhdf5 itself crashes (found by fuzz_checkpoint): every tool that reads files from outside
    reports each as a bad file, in one line with exit 2, and goes on living."""
    import gzip
    contained = os.path.join(SOURCE, "tests", "fuzz", "contained")
    cases = sorted(f for f in os.listdir(contained) if f.endswith(".h5.gz"))
    assert cases, "no contained inputs"
    with tempfile.TemporaryDirectory() as d:
        for case in cases:
            ckpt = os.path.join(d, case[:-3])
            with gzip.open(os.path.join(contained, case)) as src, open(ckpt, "wb") as dst:
                dst.write(src.read())
            for tool, cmd in [("vae_sample", [SAMPLE, "--checkpoint", ckpt, "--grid", "--out", os.path.join(d, "g.png")]),
                              ("vae_eval", MPIEXEC + ["-n", "1", EVAL, "--checkpoint", ckpt, "--data-dir", DATA, "--progress", "never"]),
                              ("vae_dist", MPIEXEC + ["-n", "1", BIN, "--progress", "never", "--config", SMOKE, "--data-dir", DATA,
                                                      "--run-dir", os.path.join(d, "run"), "--resume", ckpt])]:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                ours = [l for l in p.stderr.splitlines() if l.startswith(tool)]
                assert p.returncode == 2 and len(ours) == 1, f"{tool} on {case}: exit {p.returncode}\n{p.stderr}"
                assert f"{ckpt}: " in ours[0] and ("crashed the HDF5 library" in ours[0] or "refused" in ours[0] or "cannot" in ours[0]), ours[0]
                assert not os.path.exists(os.path.join(d, "g.png")), "a picture was drawn from a hostile file"


def case_export():
    """vae_export writes the decoder alone (its exact size), reference rows that are probabilities, and refuses bad input in one line."""
    export = os.path.join(os.path.dirname(BIN), "vae_export")
    with tempfile.TemporaryDirectory() as d:
        ckpt = smoke_checkpoint(d)
        out, ref = os.path.join(d, "m.vaed"), os.path.join(d, "r.json")
        p = subprocess.run([export, "--checkpoint", ckpt, "--out", out, "--reference", ref, "--reference-count", "12"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        data = open(out, "rb").read()
        assert data[:8] == b"VAEDEC01", data[:8]
        # smoke.ini: latent 16, hidden 128,64, 10 classes; the decoder is 26 > 64 > 128 > 784
        floats = (26 * 64 + 64) + (64 * 128 + 128) + (128 * 784 + 784)
        (about_len,) = struct.unpack("<I", data[48:52])
        header = 52 + about_len + (-about_len) % 4
        assert struct.unpack("<9I", data[8:44]) == (1, 16, 10, 1, 0, 1, 784, 2, 128), struct.unpack("<9I", data[8:44])
        assert len(data) == header + 4 * floats, (len(data), header, floats)
        about = json.loads(data[52:52 + about_len])
        assert about["epoch"] == 1 and about["checkpoint"] == ckpt, about
        r = json.load(open(ref))
        assert r["rows"] == 12 and r["dec_in"] == 26 and len(r["inputs"]) == 12 * 26 and len(r["probabilities"]) == 12 * 784, r.keys()
        assert all(0.0 < x < 1.0 for x in r["probabilities"])
        for i in range(12):  # row i asks for digit i mod 10
            assert r["inputs"][i * 26 + 16:(i + 1) * 26] == [1.0 if c == i % 10 else 0.0 for c in range(10)]
        for args, needle in [
            (["--checkpoint", ckpt], "vae_export: error: option --out is required"),
            (["--checkpoint", os.path.join(d, "none.h5"), "--out", out], "none.h5"),
            (["--checkpoint", ckpt, "--out", out, "--reference", ref, "--reference-count", "0"], "option --reference-count: must be in 1-10000"),
            (["--checkpoint", ckpt, "--out", os.path.join(d, "no", "dir", "m.vaed")], "cannot write"),
        ]:
            p = subprocess.run([export, *args], capture_output=True, text=True, timeout=60)
            lines = p.stderr.strip().splitlines()
            assert p.returncode in (1, 2) and len(lines) == 1 and needle in lines[0], (args, p.returncode, p.stderr)
        assert open(out, "rb").read() == data, "a failed export touched the earlier file"


def case_average():
    """vae_average writes the mean of two epochs' parameters as a checkpoint vae_eval reads (its -ELBO between or below
    theirs is not promised, only that it evaluates), and refuses one checkpoint, a missing one and another architecture
    in one line each, leaving an earlier output alone."""
    average = os.path.join(os.path.dirname(BIN), "vae_average")
    with tempfile.TemporaryDirectory() as d:
        code, out, err = run(1, "--config", SMOKE, "--data-dir", DATA, "--run-dir", d, "--epochs", "2")
        assert code == 0, out + err
        e1, e2 = (os.path.join(d, "checkpoints", f"ckpt-e000{e}.h5") for e in (1, 2))
        mean = os.path.join(d, "mean.h5")
        p = subprocess.run([average, "--checkpoint", e1, e2, "--out", mean], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and "mean of 2 checkpoints" in p.stdout, p.stdout + p.stderr
        code, out, err = run_eval(1, "--checkpoint", mean, "--test-limit", "500", "--iw-samples", "0", "--samples-per-digit", "0")
        assert code == 0 and "test -ELBO" in out, out + err
        other = smoke_checkpoint(os.path.join(d, "other"), "--latent", "8")
        written = open(mean, "rb").read()
        for args, needle in [
            (["--checkpoint", e1, "--out", mean], "give two checkpoints or more"),
            (["--checkpoint", e1, os.path.join(d, "none.h5"), "--out", mean], "none.h5"),
            (["--checkpoint", e1, other, "--out", mean], "another architecture"),
        ]:
            p = subprocess.run([average, *args], capture_output=True, text=True, timeout=60)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("vae_average: error:") and needle in lines[0], (args, p.returncode, p.stderr)
        assert open(mean, "rb").read() == written, "a refused average touched the earlier file"


def case_ema():
    """A run with --ema-decay keeps the weights' moving average in its checkpoints: vae_eval and vae_sample run it with
    --weights ema (vae_eval's -ELBO then differs from the raw weights'); a checkpoint without one, and a decay outside
    [0, 1), are refused in one line with exit 2."""
    with tempfile.TemporaryDirectory() as d:
        ckpt = smoke_checkpoint(os.path.join(d, "ema"), "--ema-decay", "0.99")
        elbo = {}
        for weights in ("raw", "ema"):
            code, out, err = run_eval(1, "--checkpoint", ckpt, "--weights", weights, "--test-limit", "500", "--iw-samples", "0",
                                      "--samples-per-digit", "0", "--json", os.path.join(d, weights + ".json"))
            assert code == 0, out + err
            elbo[weights] = json.load(open(os.path.join(d, weights + ".json")))["test_elbo"]
        assert elbo["raw"] != elbo["ema"], elbo
        png = os.path.join(d, "g.png")
        p = subprocess.run([SAMPLE, "--checkpoint", ckpt, "--weights", "ema", "--grid", "--out", png], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and os.path.exists(png), p.stderr
        plain = smoke_checkpoint(os.path.join(d, "plain"))
        for tool, cmd in [("vae_eval", MPIEXEC + ["-n", "1", EVAL, "--checkpoint", plain, "--weights", "ema", "--data-dir", DATA]),
                          ("vae_sample", [SAMPLE, "--checkpoint", plain, "--weights", "ema", "--grid", "--out", png]),
                          ("vae_sample", [SAMPLE, "--checkpoint", ckpt, "--weights", "mean", "--grid", "--out", png])]:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            ours = [l for l in p.stderr.splitlines() if l.startswith(tool)]
            assert p.returncode == 2 and len(ours) == 1, (cmd, p.returncode, p.stderr)
            assert "holds no moving average" in ours[0] or "option --weights: unknown value 'mean'" in ours[0], ours[0]
        expect_usage_error(1, ["--config", SMOKE, "--data-dir", DATA, "--run-dir", os.path.join(d, "bad"), "--ema-decay", "1"],
                           "option --ema-decay: must be in [0, 1), got 1.000000")


globals()["case_" + CASE]()
print("ok", CASE)
