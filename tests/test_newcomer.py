"""What a first user meets: every run names its command, running out of memory
is one line, and the comparison's reference is converged by default."""

import json
import subprocess
import sys

import arviz as az
import pytest

import pyro_vae as pv

FIT = [sys.executable, "-m", "pyro_vae.fit"]


def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


def command_of(out):
    return json.loads((out / "config.json").read_text())["command"]


def test_every_kind_of_run_records_its_command(tmp_path):
    svi = ["--epochs", "2", "--hidden-dims", "16", "--eval-iwae-samples", "5", "--no-progress"]
    done = run([*FIT, *svi, "--out", str(tmp_path / "svi")])
    assert done.returncode == 0, done.stderr
    assert command_of(tmp_path / "svi") == ["python", "-m", "pyro_vae.fit", *svi, "--out", str(tmp_path / "svi")]

    nuts = ["--inference", "nuts", "--decoder-from", str(tmp_path / "svi"), "--subset", "3", "--chains", "2",
            "--warmup", "20", "--samples", "20", "--no-progress", "--out", str(tmp_path / "nuts")]
    done = run([*FIT, *nuts])
    assert done.returncode == 0, done.stderr
    assert command_of(tmp_path / "nuts") == ["python", "-m", "pyro_vae.fit", *nuts]

    deprecated = [a if a != "--inference" else "--guide" for a in nuts[:-1]] + [str(tmp_path / "old")]
    done = run([*FIT, *deprecated])
    assert done.returncode == 0, done.stderr
    assert "--guide nuts is deprecated; use --inference nuts" in done.stdout + done.stderr
    assert command_of(tmp_path / "old") == ["python", "-m", "pyro_vae.fit", *deprecated]
    assert json.loads((tmp_path / "old" / "config.json").read_text())["inference"] == "nuts"

    done = run([*FIT, "--resume", str(tmp_path / "svi"), "--epochs", "3", "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert command_of(tmp_path / "svi") == ["python", "-m", "pyro_vae.fit", "--resume", str(tmp_path / "svi"),
                                            "--epochs", "3", "--no-progress"]


def test_out_of_memory_is_one_line_and_leaves_runs_intact(tmp_path):
    """The model is built before the run directory is made, so a failed
    allocation leaves nothing half-written."""
    existing = tmp_path / "existing"
    assert run([*FIT, "--epochs", "1", "--hidden-dims", "8", "--eval-iwae-samples", "5", "--no-progress",
                "--out", str(existing)]).returncode == 0
    before = {p.name: p.read_bytes() for p in existing.iterdir()}
    done = run([*FIT, "--latent-dim", "1000000000", "--out", str(tmp_path / "huge")])
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "out of memory while building model bernoulli_mlp" in done.stderr
    assert "latent dim 1000000000" in done.stderr and "GiB asked for" in done.stderr
    assert not (tmp_path / "huge").exists()
    assert {p.name: p.read_bytes() for p in existing.iterdir()} == before


def test_default_comparison_runs_nuts_long_enough_to_converge(tmp_path, monkeypatch):
    """A comparison given no NUTS flags samples 4 x (1000 + 1000), the defaults docs/compare.md
    documents (4 x (500 + 500) flagged its own reference on the default digits comparison, R-hat
    1.017): the sampler is called with them, the run records and stores that many draws, and on a
    small fixed problem they reach R-hat <= 1.01 with no warning."""
    from pyro_vae.infer.mcmc import sampling as mcmc
    from pyro_vae.studies import posterior_comparison

    calls = []
    real = posterior_comparison.sample_latents

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(posterior_comparison, "sample_latents", spy)
    settings = pv.CompareSettings(dataset="linear_gaussian", epochs=1, subset=2, iwae_samples=10, elbo_samples=10,
                                  refine_steps=1)
    out = pv.compare(settings=settings, out=tmp_path / "c", progress=False, log=lambda *a: None).out
    assert [(c["chains"], c["warmup"], c["samples"]) for c in calls] == [(4, 1000, 1000)]
    nuts = json.loads((out / "report.json").read_text())["nuts"]
    assert (nuts["chains"], nuts["warmup"], nuts["samples"]) == (4, 1000, 1000)
    assert az.from_netcdf(out / "nuts.nc").posterior["z"].shape[:2] == (4, 1000)
    assert nuts["max_r_hat"] <= mcmc.RHAT_LIMIT == 1.01 and nuts["converged"] and not nuts["warnings"]
    assert nuts["divergences"] == 0 and nuts["min_ess_bulk"] >= 4 * mcmc.MIN_ESS_PER_CHAIN


def test_a_comparison_with_too_few_draws_still_warns(tmp_path):
    settings = pv.CompareSettings(dataset="linear_gaussian", epochs=5, subset=10, chains=4, warmup=15, samples=15,
                                  iwae_samples=20, elbo_samples=20)
    comparison = pv.compare(settings=settings, out=tmp_path / "c", progress=False, log=lambda *a: None)
    results, out = comparison.numbers, comparison.out
    assert results["nuts"]["warnings"]
    assert "- warning:" in (out / "report.md").read_text()


@pytest.mark.parametrize("pin", ["arviz>=0.17,<1"])
def test_dependencies_are_bounded_to_the_tested_series(pin):
    text = (__import__("conftest").REPO / "pyproject.toml").read_text()
    assert f'"{pin}"' in text
