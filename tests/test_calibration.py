"""Simulation-based calibration, checked where the answer is known: the exact linear-Gaussian posterior
passes, posteriors too narrow or too wide fail with the right sign, mean-field shows the dispersion
theory predicts for a correlated Gaussian, and ranks are counted against the right draws."""

import json

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from pyro_vae.plumbing.cli import ArgumentParser, UsageError
from pyro_vae.plumbing.registry import MODELS
from pyro_vae.studies.calibration import (METHODS, CalibrationSettings, add_calibration_arguments, calibrate,
                                          calibrate_methods, calibration_methods, settings_from_args)
from pyro_vae.studies.rank_statistics import LEVELS, coverage, ranks_of

# W's columns nearly aligned: p(z | x) has correlation -0.69 between z[0] and z[1] (sigma = 1)
WEIGHT = [[1.0, 0.5], [1.0, 1.0], [0.5, 1.0], [1.0, 0.8]]


@pytest.fixture(scope="module")
def model():
    model = MODELS["linear_gaussian"](4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(WEIGHT))
        model.bias.copy_(torch.tensor([0.5, -0.5, 0.0, 1.0]))
    return model


def scaled_exact(model, factor):
    """The exact posterior with every sd multiplied by ``factor`` (its mean kept)."""
    def posterior(x):
        exact = model.exact_posterior(x)
        return dist.MultivariateNormal(exact.mean, scale_tril=factor * exact.scale_tril)

    posterior.__name__ = f"exact, sd x {factor}"
    return posterior


def within_binomial_error(result, sigmas=3):
    return all(abs(result.coverage[a] - a) <= sigmas * result.coverage_se[a] for a in LEVELS)


def test_ranks_count_the_draws_below_the_truth():
    draws = torch.tensor([0.3, -1.0, 2.0, 0.9, 0.1]).reshape(5, 1, 1).expand(5, 3, 1)
    truth = torch.tensor([[-2.0], [0.5], [3.0]])
    assert ranks_of(truth, draws)[:, 0].tolist() == [0, 3, 5]  # below all, above 3 of 5 (-1, 0.1, 0.3), above all


def test_coverage_counts_the_central_ranks():
    """With L = 39 (40 rank values) the central 50% interval holds the ranks 10..29, the 95% one 1..38."""
    ranks = np.array([[9], [10], [29], [30], [0], [1], [38], [39]])
    observed, expected, _ = coverage(ranks, 39)
    assert expected == {a: a for a in LEVELS}
    assert observed[0.5] == 2 / 8 and observed[0.95] == 6 / 8
    everything = np.arange(40)[:, None]  # each rank value once: exactly the nominal coverage
    assert coverage(everything, 39)[0] == {a: a for a in LEVELS}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_exact_posterior_is_calibrated(model, seed):
    r = calibrate(model, "exact", CalibrationSettings(seed=seed))
    assert r.ranks.shape == (200, 2) and r.ranks.min() >= 0 and r.ranks.max() <= 99
    assert r.p_value > 0.01 and all(r.ecdf_inside)
    assert within_binomial_error(r)
    assert abs(r.rms_z - 1) < 0.1 and abs(r.mean_z) < 0.2
    # the posterior variance of z[d] is (P^-1)_dd, P = I + W^T W: contraction 1 - (P^-1)_dd against var p(z) = 1
    precision = (torch.eye(2) + model.weight.T @ model.weight / model.noise**2).detach()
    assert abs(r.contraction - float(1 - torch.linalg.inv(precision).diagonal().mean())) < 0.1


def test_over_and_under_confident_posteriors_fail_with_the_right_sign(model):
    narrow = calibrate(model, scaled_exact(model, 0.5))
    wide = calibrate(model, scaled_exact(model, 2.0))
    for r in (narrow, wide):
        assert r.p_value < 1e-6 and not all(r.ecdf_inside)
    # z = (mean - truth) / sd: sd halved doubles it, doubled halves it
    assert abs(narrow.rms_z - 2) < 0.25 and abs(wide.rms_z - 0.5) < 0.1
    for a in LEVELS:
        # the truth falls in the narrow interval of level a with probability 2 Phi(q / 2) - 1, q = Phi^-1((1 + a) / 2)
        q = stats.norm.ppf((1 + a) / 2)
        assert abs(narrow.coverage[a] - (2 * stats.norm.cdf(q / 2) - 1)) < 3 * narrow.coverage_se[a] + 0.01
        assert wide.coverage[a] > a + 2 * wide.coverage_se[a]


def test_ranks_against_another_simulations_posterior_fail(model):
    """Each truth ranked among draws of its neighbour's posterior (the wrong draw) is not calibrated."""
    r = calibrate(model, lambda x: model.exact_posterior(x.roll(1, 0)))
    assert r.p_value < 1e-6 and r.coverage[0.5] < 0.5 - 3 * r.coverage_se[0.5]


def test_meanfield_shows_the_predicted_under_dispersion(model):
    """The factorised q* of N(m, P^-1) is N(m_d, 1 / P_dd) per coordinate (its mean exact, its variance
    the conditional one): z-scores rms sqrt(P_dd (P^-1)_dd) = 1 / sqrt(1 - rho^2), and the central
    interval of level a covers 2 Phi(q sqrt(1 - rho^2)) - 1, q = Phi^-1((1 + a) / 2)."""
    r = calibrate(model, "meanfield")
    precision = (torch.eye(2) + model.weight.T @ model.weight / model.noise**2).detach()
    ratio = float((precision.diagonal() * torch.linalg.inv(precision).diagonal()).sqrt().mean())
    assert ratio > 1.3  # the posterior is correlated enough to tell
    assert r.p_value < 1e-3 and abs(r.rms_z - ratio) < 0.15
    for a in LEVELS:
        predicted = 2 * stats.norm.cdf(stats.norm.ppf((1 + a) / 2) / ratio) - 1
        assert abs(r.coverage[a] - predicted) < 3 * r.coverage_se[a]


def test_the_full_rank_q_star_is_calibrated(model):
    """A full-covariance Gaussian holds the Gaussian posterior exactly: its q* passes where mean-field fails."""
    r = calibrate(model, "full_rank")
    assert r.p_value > 0.01 and within_binomial_error(r) and abs(r.rms_z - 1) < 0.1


def test_the_flow_q_star_is_calibrated(model):
    """An affine autoregressive flow holds a correlated Gaussian exactly (a triangular linear map of its
    base): its q* passes where mean-field fails."""
    r = calibrate(model, "flow")
    assert "q* after" in r.notes[0]
    assert r.p_value > 0.01 and within_binomial_error(r) and abs(r.rms_z - 1) < 0.15


def test_nuts_is_calibrated(model):
    """Small on purpose (NUTS costs about 0.1 s per iteration here, whatever N): 2 chains x 60 draws
    after 100 warm-up steps, every 3rd of the 120 kept as the L = 39 each truth is ranked among."""
    settings = CalibrationSettings(simulations=100, draws=39, nuts_chains=2, nuts_warmup=100, nuts_samples=60)
    r = calibrate(model, "nuts", settings)
    assert r.ranks.shape == (100, 2) and r.bins == 20
    assert r.p_value > 0.01 and within_binomial_error(r)
    assert abs(r.rms_z - 1) < 0.15
    assert "one in 3 kept" in r.notes[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from pyro_vae import EvaluationSettings, FitConfig, fit

    config = FitConfig(dataset="digits", latent_dim=2, hidden_dims=(64,), epochs=5,
                       out=str(tmp_path_factory.mktemp("sbc") / "run"), evaluation=EvaluationSettings(10, 20))
    return fit(config, progress=False, log=lambda *a: None)


def test_amortized_and_meanfield_on_digits(digits_run, tmp_path):
    seen = []

    def encoder(x):
        seen.append(x)
        return digits_run.guide.posterior(x)

    results = calibrate_methods(digits_run, ["amortized", "meanfield", encoder], out=tmp_path, log=lambda *a: None)
    amortized, meanfield, again = results
    # the simulated rows are the model's own draws: binary pixels, as its Bernoulli likelihood gives
    assert seen[0].shape == (200, 64) and set(seen[0].unique().tolist()) == {0.0, 1.0}
    # the same seed gives the same simulations and, here, the same draws: identical ranks
    assert np.array_equal(amortized.ranks, again.ranks)
    assert amortized.seconds < meanfield.seconds  # one encoder pass against a per-point optimisation
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert [m["p_value"] for m in saved["methods"]] == [r.p_value for r in results]
    assert "| meanfield |" in (tmp_path / "calibration.md").read_text()
    from PIL import Image

    assert Image.open(tmp_path / "calibration.png").size[1] > 2 * 2.4 * 110  # a row per method


def test_semi_amortized_starts_from_the_encoder_and_moves(digits_run):
    """No refinement steps leaves the encoder's q, so the same seed gives the amortized ranks exactly;
    20 steps move every simulation's posterior, and say so."""
    amortized = calibrate(digits_run, "amortized")
    unrefined = calibrate(digits_run, "semi_amortized", CalibrationSettings(refine_steps=0))
    refined = calibrate(digits_run, "semi_amortized")
    assert np.array_equal(unrefined.ranks, amortized.ranks)
    assert not np.array_equal(refined.ranks, amortized.ranks) and refined.ranks.shape == amortized.ranks.shape
    assert refined.notes[0].startswith("20 Adam steps")


def test_bad_input_is_one_usage_error(model, digits_run):
    with pytest.raises(UsageError, match="too few posterior draws"):
        calibrate(model, "exact", CalibrationSettings(draws=10))
    with pytest.raises(UsageError, match="cannot be split"):
        calibrate(model, "exact", CalibrationSettings(draws=40))  # 41 rank values: prime
    with pytest.raises(UsageError, match="too few to test"):
        calibrate(model, "exact", CalibrationSettings(simulations=8))
    with pytest.raises(UsageError, match="0 or more steps"):
        calibrate(model, "exact", CalibrationSettings(refine_steps=-1))
    with pytest.raises(UsageError, match="needs an amortized encoder"):
        calibrate(model, "amortized")  # a bare model has no encoder to draw from
    with pytest.raises(UsageError, match="cannot be sampled"):
        calibrate(model, lambda x: model.exact_posterior(x).mean)
    with pytest.raises(UsageError, match="no closed-form posterior"):
        calibrate(digits_run, "exact")
    with pytest.raises(UsageError, match="unknown calibration method"):
        calibrate(model, "laplace")
    with pytest.raises(UsageError, match="unknown method laplace"):
        calibration_methods("amortized,laplace")
    assert calibration_methods("all") == METHODS


def test_flags_become_settings():
    parser = ArgumentParser(prog="test")
    parser.add_argument("--seed", type=int, default=0)
    add_calibration_arguments(parser)
    args = parser.parse_args(["--calibrate", "exact,nuts", "--sbc-simulations", "300", "--sbc-draws", "199",
                              "--seed", "3"])
    assert calibration_methods(args.calibrate) == ("exact", "nuts")
    assert settings_from_args(args) == CalibrationSettings(simulations=300, draws=199, seed=3)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--sbc-draws", "0"])
    assert exit_.value.code == 2


def test_evaluate_and_compare_calibrate_through_the_command_and_the_api(digits_run, tmp_path, capsys):
    """--calibrate of both commands: the command's JSON holds the same numbers as the API's result and as
    calibrate() itself; a bad method or too few draws is one line and exit 2 before any work."""
    import pyro_vae as pv
    from pyro_vae.compare import main as compare_main
    from pyro_vae.evaluate import main as evaluate_main

    settings = CalibrationSettings(simulations=100, draws=39)
    direct = calibrate(digits_run, "amortized", settings)
    evaluation = pv.evaluate(digits_run, pv.EvaluateSettings(iwae_samples=5, max_examples=5, calibrate="amortized",
                                                             calibration=settings), out=tmp_path / "api")
    assert evaluation["calibration"][0]["p_value"] == direct.p_value
    evaluate_main([str(digits_run.out), "--iwae-samples", "5", "--max-examples", "5", "--calibrate", "amortized",
                   "--sbc-simulations", "100", "--sbc-draws", "39", "--no-progress"])
    printed = capsys.readouterr().out
    saved = json.loads((digits_run.out / "eval.json").read_text())["calibration"][0]
    assert saved["p_value"] == direct.p_value and "| amortized |" in printed
    assert (digits_run.out / "calibration.png").exists()

    compare_main(["--run", str(digits_run.out), "--subset", "3", "--chains", "2", "--warmup", "20", "--samples", "20",
                  "--iwae-samples", "5", "--elbo-samples", "5", "--refine-steps", "1", "--no-progress", "--out",
                  str(tmp_path / "cmp"), "--calibrate", "amortized", "--sbc-simulations", "100", "--sbc-draws", "39"])
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["calibration"][0]["p_value"] == direct.p_value
    assert "Simulation-based calibration" in (tmp_path / "cmp" / "report.md").read_text()

    for flags, message in ((["--calibrate", "laplace"], "unknown method laplace"), (["--calibrate", "amortized",
                                                                                      "--sbc-draws", "10"], "too few")):
        with pytest.raises(SystemExit) as stop:
            compare_main(["--run", str(digits_run.out), "--out", str(tmp_path / "bad"), *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and message in err[0], err
        assert not (tmp_path / "bad").exists()
