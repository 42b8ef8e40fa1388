"""Data-parallel SVI with torchrun and Gloo: two processes against one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae.plumbing.checkpoint import load_checkpoint
from pyro_vae.runs.assembly import build, load_data
from pyro_vae.runs.config import FitConfig

TESTS = Path(__file__).resolve().parent
COMMON = ["--dataset", "digits", "--num-train", "256", "--num-test", "64", "--hidden-dims", "16", "--latent-dim", "2",
          "--batch-size", "64", "--epochs", "2", "--eval-iwae-samples", "5", "--eval-max-examples", "20",
          "--no-progress", "--import", "delta_guide"]


def run(args, out, processes=1):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "-m", "pyro_vae.fit", *COMMON, *args, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_gloo_processes_match_one_process(tmp_path):
    # deterministic gradients (a Delta guide, static binarization): the same global
    # batch and seed must give the same parameters within floating-point tolerance
    args = ["--guide", "delta", "--binarize", "static"]
    run(args, tmp_path / "one")
    run(args, tmp_path / "two", processes=2)
    one, two = load_checkpoint(tmp_path / "one" / "checkpoint.pt"), load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    for part in ("model", "guide"):
        for key, value in one[part].items():
            assert torch.allclose(value, two[part][key], atol=1e-5, rtol=1e-4), (part, key)
    # the ELBO stays on the full-data scale
    for a, b in zip(one["metrics"], two["metrics"]):
        assert abs(a["train_elbo"] - b["train_elbo"]) < 1e-3 * abs(a["train_elbo"])
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["world_size"] == 2


def test_meanfield_ranks_share_every_local_row(tmp_path):
    run(["--guide", "meanfield"], tmp_path / "mf", processes=2)
    state = load_checkpoint(tmp_path / "mf" / "checkpoint.pt")
    # the initial rows, rebuilt as rank 0 built them (seed + rank 0)
    config = FitConfig(guide="meanfield", dataset="digits", num_train=256, num_test=64, hidden_dims=(16,), latent_dim=2)
    pyro.set_rng_seed(config.seed)
    _, guide = build(config, load_data(config, "cpu"))
    changed = (state["guide"]["loc.weight"] != guide.loc.weight.detach()).all(-1)
    # every training point's row moved, including those the other rank's
    # shards held: rank 0 applied rank 1's sparse gradients
    assert changed.all()
    assert not [p for p in (tmp_path / "mf").iterdir() if p.name.endswith(".tmp")]
