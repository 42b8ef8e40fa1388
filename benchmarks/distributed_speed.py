"""Training throughput with 1 and 2 data-parallel processes (torchrun, Gloo on CPU, NCCL on GPUs).

    python benchmarks/distributed_speed.py --data-dir ../shared/data/mnist [--epochs 2] [--device cpu]

Runs ``python -m pyro_vae.fit`` on MNIST (784-400-50, batch 128 global,
dynamic binarization) as: one process with all cores' threads, one process
with one thread, and ``torchrun --nproc_per_node 2`` with one thread per
process; reads the per-epoch training seconds from each run's
``metrics.jsonl`` and prints examples per second (median over epochs) and
the speed-up over one process. On a 2-core machine the honest comparison is
2 processes x 1 thread against 1 process x 2 threads: the cores are the same.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import machine_header


def run(label, launcher, threads, args, out):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [*launcher, "-m", "pyro_vae.fit", *args, "--out", str(out)]
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    seconds = statistics.median(m["seconds"] for m in metrics)
    return {"label": label, "seconds": seconds, "examples_per_second": config["num_train"] / seconds,
            "test_elbo": metrics[-1]["test_elbo"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(machine_header(), flush=True)
    common = ["--dataset", "mnist", "--data-dir", args.data_dir, "--latent-dim", "50", "--hidden-dims", "400",
              "--batch-size", "128", "--epochs", str(args.epochs), "--device", args.device, "--no-progress",
              "--eval-iwae-samples", "10", "--eval-max-examples", "100"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(f"1 process x {cores} threads", [sys.executable], cores, common, Path(tmp) / "a"),
                run("1 process x 1 thread", [sys.executable], 1, common, Path(tmp) / "b"),
                run("2 processes x 1 thread", torchrun, 1, common, Path(tmp) / "c")]
    base = rows[0]["examples_per_second"]
    print(f"{'configuration':<26}{'s/epoch':>10}{'examples/s':>14}{'speed-up':>10}{'test ELBO':>12}")
    for r in rows:
        print(f"{r['label']:<26}{r['seconds']:>10.2f}{r['examples_per_second']:>14.0f}"
              f"{r['examples_per_second'] / base:>10.2f}{r['test_elbo']:>12.2f}")


if __name__ == "__main__":
    main()
