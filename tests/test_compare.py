"""The comparison of encoder, mean-field and NUTS posteriors, checked against the exact linear-Gaussian answer."""

import json

import arviz as az
import pytest

import pyro_vae as pv
from pyro_vae.compare import main

SMALL = dict(subset=30, chains=2, warmup=300, samples=400, iwae_samples=500, elbo_samples=400)
QUIET = {"progress": False, "log": lambda *a: None}


@pytest.fixture(scope="module")
def linear_gaussian_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "lg"
    comparison = pv.compare(settings=pv.CompareSettings(dataset="linear_gaussian", epochs=30, **SMALL), out=out, **QUIET)
    return comparison.numbers, out


def test_bounds_hold_against_the_exact_answer(linear_gaussian_report):
    r, _ = linear_gaussian_report
    exact = r["exact"]["log_likelihood"]
    tolerance = 3 * r["amortization_gap_se"] + 0.01
    assert r["amortized"]["elbo"] <= r["meanfield"]["elbo"] + tolerance
    assert r["meanfield"]["elbo"] <= exact + 0.01
    # K refinement steps of the encoder's q land between the encoder and q*
    assert r["amortized"]["elbo"] - tolerance <= r["semi_amortized"]["elbo"] <= r["meanfield"]["elbo"] + tolerance
    assert r["semi_amortized_closes"][0] > -tolerance and r["semi_amortized"]["steps"] == 20
    # the importance-weighted estimates with the NUTS proposal recover log p(x)
    assert abs(r["nuts"]["log_likelihood"] - exact) < 0.02


def test_nuts_moments_match_exact(linear_gaussian_report):
    r, _ = linear_gaussian_report
    assert r["exact"]["mean_error"] < 0.05
    assert abs(r["exact"]["sd_ratio"] - 1) < 0.05
    assert r["exact"]["kl_to_nuts"] < 0.01


def test_approximation_gap_equals_the_exact_one(linear_gaussian_report):
    r, _ = linear_gaussian_report
    assert abs(r["approximation_gap"] - r["exact_approximation_gap"]) < 0.02
    assert r["approximation_gap"] > 0 and r["amortization_gap"] > -3 * r["amortization_gap_se"]


def test_outputs(linear_gaussian_report):
    r, out = linear_gaussian_report
    saved = json.loads((out / "report.json").read_text())
    for name in ("amortized", "meanfield", "nuts", "exact", "approximation_gap", "amortization_gap"):
        assert name in saved
    for name in ("amortized", "semi_amortized", "meanfield", "nuts"):
        idata = az.from_netcdf(out / f"{name}.nc")
        assert idata.posterior["z"].shape[-2:] == (30, 2)
    assert (out / "forest.png").stat().st_size > 0 and (out / "ellipses.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| exact |" in report and "amortization gap" in report


def test_latent_dim_one_skips_ellipses_with_a_note(tmp_path):
    settings = pv.CompareSettings(dataset="linear_gaussian", latent_dim=1, epochs=5, subset=10, chains=2, warmup=100,
                                  samples=100, iwae_samples=50, elbo_samples=50)
    comparison = pv.compare(settings=settings, out=tmp_path / "c", **QUIET)
    results, out = comparison.numbers, comparison.out
    assert not (out / "ellipses.png").exists()
    assert any("ellipses.png skipped" in note for note in results["notes"])
    assert "ellipses.png skipped" in (out / "report.md").read_text()


def test_usage_errors(tmp_path, capsys, linear_gaussian_report):
    _, out = linear_gaussian_report
    run = out / "amortized-run"
    for args, message in [(["--run", str(run), "--subset", "100000"], "larger than"),
                          (["--run", str(run), "--dataset", "digits"], "trained on linear_gaussian"),
                          (["--run", str(tmp_path / "none")], "no checkpoint")]:
        with pytest.raises(SystemExit) as info:
            main([*args, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_fit_from_scratch_compares_three_learners(tmp_path):
    """Every learner learns: on linear_gaussian (exact log p(x) for any decoder) its held-out log p(x)
    climbs pass after pass, ends well above the untrained decoder's exact value and below the
    closed-form maximum-likelihood pPCA's."""
    import pyro
    import torch

    from pyro_vae.runs.assembly import build_model, load_data
    from pyro_vae.runs.config import FitConfig
    from pyro_vae.models.linear_gaussian import LinearGaussian
    from pyro_vae.studies.scratch import ScratchSettings, fit_from_scratch

    # 4 steps a pass at a learning rate that moves the decoder in 2 passes (compare's own --lr is 1e-3)
    config = FitConfig(dataset="linear_gaussian", latent_dim=2, hidden_dims=(16,), num_train=100, batch_size=25,
                       lr=0.05, device="cpu")
    settings = ScratchSettings(passes=2, subset=30, iwae_samples=100, m_steps=10, mcem_warmup=20, mcem_samples=5)
    out = tmp_path / "s"
    out.mkdir()
    results, out = fit_from_scratch(config, settings, out, log=lambda *a: None)
    scratch = results["fit_from_scratch"]
    objectives = {"amortized-iwae-K5", "amortized-iwae-dreg-K5", "amortized-rws-K5", "amortized-wake-sleep",
                  "amortized-score-function"}
    assert set(scratch["final"]) == {"amortized", "meanfield", "semi_amortized", "mcem"} | objectives
    data = load_data(config, torch.device("cpu"))
    heldout = data.test_x[:30]
    pyro.set_rng_seed(config.seed)
    with torch.no_grad():
        untrained = build_model(config, data).log_marginal(heldout).mean().item()  # -25.97
        w, b, sigma = LinearGaussian.maximum_likelihood(data.train_x, 2)
        best = LinearGaussian(data.data_dim, 2)
        best.weight.copy_(w)
        best.bias.copy_(b)
        best.raw_noise.copy_(torch.log(torch.expm1(sigma)))
        ceiling = best.log_marginal(heldout).mean().item()  # -11.38
    for name, curve in scratch["curves"].items():
        assert [c["pass"] for c in curve] == [1, 2]
        assert all(b["seconds"] >= a["seconds"] for a, b in zip(curve, curve[1:]))
        lls = [c["log_likelihood"] for c in curve]
        # measured: amortized -21.5 -> -18.9, meanfield -20.2 -> -18.1, semi_amortized -20.4 -> -18.2,
        # mcem -17.6 -> -16.5; the standard errors over points are 0.4-1.3, shared by both passes
        assert lls[1] > lls[0] + 0.5, (name, lls)
        if name != "amortized-score-function":  # its noisy encoder gradient: -28.4 -> -24.8, still climbing
            assert lls[-1] > untrained + 4.0, (name, lls, untrained)
        assert lls[-1] < ceiling, (name, lls, ceiling)
    # what the reparameterisation trick buys: the same learner with the same steps learns a better decoder
    final = scratch["final"]
    assert final["amortized"]["log_likelihood"] > final["amortized-score-function"]["log_likelihood"] + 1.0
    assert scratch["final"]["mcem"] == scratch["curves"]["mcem"][-1]
    assert (out / "scratch_curve.png").stat().st_size > 0
    assert "| mcem |" in (out / "report.md").read_text()


def test_fit_from_scratch_under_a_wall_time_budget(tmp_path):
    """--budget: every SVI learner trains for the same wall time (whole epochs,
    the last one crossing it); Monte Carlo EM is skipped beyond 5000 points."""
    settings = pv.CompareSettings(fit_from_scratch=True, dataset="linear_gaussian", latent_dim=2, num_train=6000,
                                  budget=1.5, hidden_dims=(16,), subset=20, iwae_samples=20, objectives=("iwae",),
                                  particles=3)
    comparison = pv.compare(settings=settings, out=tmp_path / "s", **QUIET)
    results, out = comparison.numbers, comparison.out
    scratch = results["fit_from_scratch"]
    assert set(scratch["final"]) == {"amortized", "meanfield", "semi_amortized", "amortized-iwae-K3"}
    assert any("mcem skipped" in note for note in scratch["notes"])
    for curve in scratch["curves"].values():
        assert curve[-1]["seconds"] >= 1.5 and all(c["seconds"] < 1.5 for c in curve[:-1])
    assert "mcem skipped" in (out / "report.md").read_text()


def test_gaps_by_ais_match_the_exact_gap(tmp_path):
    settings = pv.CompareSettings(dataset="linear_gaussian", epochs=30, subset=20, chains=2, warmup=200, samples=200,
                                  iwae_samples=100, elbo_samples=400, ais_steps=50, ais_chains=4)
    comparison = pv.compare(settings=settings, out=tmp_path / "a", **QUIET)
    r, out = comparison.numbers, comparison.out
    assert r["log_likelihood_for_gaps"].startswith("AIS, 4 chains x 50 steps")
    assert abs(r["ais"]["log_likelihood"] - r["exact"]["log_likelihood"]) < 0.05
    assert abs(r["approximation_gap"] - r["exact_approximation_gap"]) < 0.05
    assert "AIS: log p(x)" in (out / "report.md").read_text()
