"""Fingerprint the project's figures through its commands, so that a restructure can be shown to move nothing.

    python benchmarks/fingerprint.py --out fingerprint.json      # before the change
    python benchmarks/fingerprint.py --against fingerprint.json  # after it: lists every figure that moved

Runs the three commands as a user does (``python -m pyro_vae.fit``, ``evaluate``, ``compare``), in fresh
processes on one thread, on small settings, and collects every number they write: the SVI summaries'
ELBOs and IWAE, evaluate's IWAE, AIS and BDMC, the NUTS and ChEES draws (``posterior.nc``), EM's and
enumeration's exact log p(x) on the mixture, and compare's gaps (the four-method comparison and the
per-family table on ``linear_gaussian``). Times, paths and package versions are left out; everything else
must be identical bit for bit. It reads only the run directories, never the package's modules, so the same
script runs on both sides of a move.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# keys whose values are times, places or versions (a substring of the key); every other number must match
SKIPPED_KEYS = ("seconds", "time", "wall", "version", "run_dir", "path", "command", "date", "device",
                "decoder_from", "per_second", "started")


def commands(work):
    """(name, argv, run directory) of each run, in order: later ones read earlier ones' directories."""
    w = Path(work)
    lg, dg = w / "lg", w / "digits"
    fit = [sys.executable, "-m", "pyro_vae.fit", "--no-progress"]
    evaluate = [sys.executable, "-m", "pyro_vae.evaluate", "--no-progress"]
    compare = [sys.executable, "-m", "pyro_vae.compare"]
    return [
        ("fit_linear_gaussian", fit + ["--dataset", "linear_gaussian", "--epochs", "3", "--hidden-dims", "16",
                                       "--out", str(lg)], lg),
        ("fit_digits", fit + ["--epochs", "2", "--hidden-dims", "32", "--out", str(dg)], dg),
        ("fit_digits_meanfield", fit + ["--guide", "meanfield", "--epochs", "2", "--hidden-dims", "32",
                                        "--out", str(w / "mf")], w / "mf"),
        ("fit_digits_iwae", fit + ["--elbo", "iwae", "--particles", "3", "--epochs", "1", "--hidden-dims", "32",
                                   "--out", str(w / "iwae")], w / "iwae"),
        ("evaluate_lg", evaluate + [str(lg), "--iwae-samples", "50", "--max-examples", "20", "--estimator", "ais",
                                    "--ais-steps", "20", "--ais-chains", "2", "--bdmc"], lg),
        ("evaluate_digits", evaluate + [str(dg), "--iwae-samples", "40", "--max-examples", "30"], dg),
        ("nuts", fit + ["--inference", "nuts", "--decoder-from", str(dg), "--subset", "4", "--chains", "2",
                        "--warmup", "60", "--samples", "40", "--out", str(w / "nuts")], w / "nuts"),
        ("chees", fit + ["--inference", "nuts", "--sampler", "chees", "--decoder-from", str(dg), "--subset", "4",
                         "--chains", "4", "--warmup", "60", "--samples", "40", "--out", str(w / "chees")],
         w / "chees"),
        ("em_gmm", fit + ["--dataset", "gmm_synthetic", "--model", "gmm", "--inference", "em", "--epochs", "20",
                          "--out", str(w / "em")], w / "em"),
        ("enum_gmm", fit + ["--dataset", "gmm_synthetic", "--model", "gmm", "--guide", "enumerated", "--elbo",
                            "enum", "--epochs", "3", "--out", str(w / "enum")], w / "enum"),
        ("compare_lg", compare + ["--run", str(lg), "--subset", "5", "--iwae-samples", "50", "--elbo-samples", "20",
                                  "--refine-steps", "5", "--chains", "2", "--warmup", "50", "--samples", "50",
                                  "--out", str(w / "cmp")], w / "cmp"),
        ("families_lg", compare + ["--dataset", "linear_gaussian", "--families", "ffg,full_rank,flow", "--epochs", "2",
                                   "--subset", "4", "--iwae-samples", "30", "--elbo-samples", "10", "--ais-steps",
                                   "10", "--ais-chains", "2", "--chains", "2", "--warmup", "40", "--samples", "40",
                                   "--out", str(w / "fam")], w / "fam"),
    ]


def numbers(value, prefix=""):
    """Every number in a JSON value, flattened to {dotted.key: value}, times and paths left out."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not any(s in str(k) for s in SKIPPED_KEYS):
                out.update(numbers(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(numbers(v, f"{prefix}{i}."))
        return out
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return {}
    return {prefix.rstrip("."): value}


def draws_digest(path):
    """sha256 of the posterior draws of an InferenceData file, with their shape."""
    import arviz as az

    idata = az.from_netcdf(str(path))
    arrays = [np.ascontiguousarray(idata.posterior[name].values) for name in sorted(idata.posterior.data_vars)]
    digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()
    return {"sha256": digest, "shape": [list(a.shape) for a in arrays], "mean": float(np.mean(arrays[0]))}


def collect(name, run_dir):
    found = {}
    for file in ("summary.json", "eval.json", "report.json", "families.json"):
        if (run_dir / file).exists():
            found.update({f"{file}:{k}": v for k, v in numbers(json.loads((run_dir / file).read_text())).items()})
    if name in ("nuts", "chees"):
        found["posterior.nc"] = draws_digest(run_dir / "posterior.nc")
    return found


def fingerprint(work):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    result = {}
    for name, argv, run_dir in commands(work):
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result[name] = collect(name, run_dir)
        print(f"{name}: {len(result[name])} figures", flush=True)
    return result


def differences(before, after):
    lines = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name, {}), after.get(name, {})
        for key in sorted(set(b) | set(a)):
            if b.get(key) != a.get(key):
                lines.append(f"{name} {key}: {b.get(key, '(absent)')} -> {a.get(key, '(absent)')}")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the fingerprint here")
    p.add_argument("--against", help="a fingerprint written before: print every figure that differs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        result = fingerprint(work)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True))
    count = sum(len(v) for v in result.values())
    if args.against:
        moved = differences(json.loads(Path(args.against).read_text()), result)
        print("\n".join(moved) if moved else f"identical: all {count} figures")
        sys.exit(1 if moved else 0)
    print(f"{count} figures")


if __name__ == "__main__":
    main()
