"""NUTS on the linear-Gaussian model, whose posterior and maximum likelihood are exact."""

import json

import arviz as az
import pytest
import torch

from pyro_vae.evaluate import main as evaluate_main
from pyro_vae.runs.config import EvaluationSettings, MCMCSettings
from pyro_vae import FitConfig, fit, load_run
from pyro_vae.fit import main
from pyro_vae.models.linear_gaussian import LinearGaussian
from pyro_vae.infer.mcmc.sampling import diagnose, inference_data, sample_latents

QUIET = {"progress": False, "log": lambda *a: None}


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lgnuts") / "decoder"
    config = FitConfig(dataset="linear_gaussian", latent_dim=2, hidden_dims=(32,), epochs=60, lr=1e-2, batch_size=100,
                       out=str(out), evaluation=EvaluationSettings(20))
    return fit(config, **QUIET)


@pytest.fixture(scope="module")
def nuts_run(decoder_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("lgnuts") / "nuts"
    config = FitConfig(inference="nuts", out=str(out),
                       mcmc=MCMCSettings(decoder_from=str(decoder_run.out), subset=20, chains=4, warmup=300, samples=800))
    return fit(config, **QUIET)


def test_nuts_matches_exact_posterior_moments(decoder_run, nuts_run):
    model, x = decoder_run.model, decoder_run.data.test_x[:20]
    idata = az.from_netcdf(nuts_run.out / "posterior.nc")
    draws = torch.as_tensor(idata.posterior["z"].values)  # (chain, draw, point, latent)
    flat = draws.reshape(-1, 20, 2)
    with torch.no_grad():
        exact = model.exact_posterior(x)
    ess = torch.as_tensor(az.ess(idata, var_names=["z"])["z"].values)  # (point, latent)
    mc_error = exact.stddev / ess.sqrt()
    assert torch.all((flat.mean(0) - exact.mean).abs() < 5 * mc_error)
    # variance: relative MC error about sqrt(2 / ESS), with the effective sample
    # size of the squares (NUTS's draws are antithetic for the mean, not for the square)
    squares = az.from_dict(posterior={"z": ((draws - exact.mean) ** 2).numpy()})
    ess_squares = torch.as_tensor(az.ess(squares, method="mean")["z"].values)
    assert torch.all((flat.var(0) / exact.variance - 1).abs() < 5 * (2 / ess_squares).sqrt())
    assert nuts_run.summary["max_r_hat"] <= 1.01
    assert nuts_run.summary["divergences"] == 0


def test_nuts_run_directory_holds_arviz_outputs(nuts_run):
    out = nuts_run.out
    idata = az.from_netcdf(out / "posterior.nc")
    assert {"posterior", "sample_stats", "observed_data"} <= set(idata.groups())
    assert idata.posterior["z"].shape == (4, 800, 20, 2)
    assert idata.observed_data["x"].shape == (20, 10)
    stats = idata.sample_stats
    for name in ["diverging", "tree_depth", "n_steps", "acceptance_rate", "energy", "step_size"]:
        assert stats[name].shape == (4, 800), name
    assert float(stats["acceptance_rate"].mean()) > 0.6
    table = (out / "diagnostics.csv").read_text().splitlines()
    assert "r_hat" in table[0] and "ess_bulk" in table[0] and "ess_tail" in table[0]
    assert len(table) == 1 + 40
    summary = json.loads((out / "summary.json").read_text())
    assert summary["subset"] == 20 and summary["chains"] == 4 and "warnings" in summary


def test_evaluate_on_nuts_run_uses_moment_matched_draws(decoder_run, nuts_run, capsys):
    evaluate_main([str(nuts_run.out), "--iwae-samples", "200", "--no-progress"])
    results = json.loads((nuts_run.out / "eval.json").read_text())
    assert results["num_examples"] == 20
    # a full-covariance Gaussian fitted to draws of a Gaussian posterior is
    # nearly exact: the importance-weighted estimate equals the exact value
    assert abs(results["log_likelihood"] - results["exact_log_likelihood"]) < 0.02
    model, posterior, data, config, _ = load_run(nuts_run.out)
    assert config.inference == "nuts" and config.dataset == "linear_gaussian"


def test_mcem_learns_maximum_likelihood_decoder(tmp_path):
    out = tmp_path / "mcem"
    config = FitConfig(inference="nuts", dataset="linear_gaussian", latent_dim=2, lr=0.02, out=str(out),
                       mcmc=MCMCSettings(mode="mcem", subset=100, em_iterations=25, m_steps=20, warmup=50, samples=20,
                                         chains=1))
    result = fit(config, **QUIET)
    x = result.data.train_x[:100]
    w, b, sigma = LinearGaussian.maximum_likelihood(x, 2)
    ml = LinearGaussian(10, 2)
    with torch.no_grad():
        ml.weight.copy_(w)
        ml.bias.copy_(b)
        ml.raw_noise.copy_(torch.log(torch.expm1(sigma)))
        gap = ml.log_marginal(x).mean() - result.model.log_marginal(x).mean()
    assert 0 <= gap < 0.1
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 25
    # the learned decoder is saved like any run's
    model, _, _, _, _ = load_run(out)
    assert torch.equal(model.weight, result.model.weight)


def test_diagnostics_warn_on_disagreeing_chains():
    x = torch.zeros(3, 4)
    draws = torch.randn(2, 100, 3, 2)
    draws[1] += 3.0  # the second chain sits elsewhere
    stats = {"diverging": torch.zeros(2, 100, dtype=torch.bool)}
    _, figures, warnings = diagnose(inference_data(draws, stats, x), chains=2)
    assert figures["max_r_hat"] > 1.01
    assert any("R-hat" in w for w in warnings)


def test_nuts_usage_errors(tmp_path, capsys, decoder_run):
    for args, message in [([], "--decoder-from"),
                          (["--decoder-from", str(decoder_run.out), "--subset", "100000"], "larger than"),
                          (["--decoder-from", str(tmp_path)], "checkpoint.pt: no checkpoint"),
                          (["--decoder-from", str(decoder_run.out), "--subset", "6", "--block-size", "4"],
                           "--block-size must divide --subset (6)"),
                          (["--nuts-mode", "mcem", "--sampler", "chees"], "apply to --nuts-mode fixed-decoder")]:
        with pytest.raises(SystemExit) as info:
            main(["--inference", "nuts", *args, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_same_seed_same_draws(decoder_run):
    model, x = decoder_run.model, decoder_run.data.test_x[:5]
    a = sample_latents(model, x, chains=1, warmup=30, samples=30, seed=3)[0]
    b = sample_latents(model, x, chains=1, warmup=30, samples=30, seed=3)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("options", [{"block_size": 1}, {"block_size": 3}, {"block_size": 1, "max_tree_depth": 3},
                                     {"sampler": "chees"}])
def test_many_points_samplers_match_exact_posterior(decoder_run, options):
    """Every point its own NUTS tree (with or without a depth cap), blocks
    of points, and ChEES-HMC with every point its own chains: the same exact
    posterior as the joint chain."""
    model, x = decoder_run.model, decoder_run.data.test_x[:6]
    # ChEES learns its trajectory length from all rows at once: 24 rows need a longer warm-up than NUTS
    warmup = 1000 if options.get("sampler") == "chees" else 200
    draws, stats, _ = sample_latents(model, x, chains=4, warmup=warmup, samples=600, seed=1, compile=False, **options)
    assert draws.shape == (4, 600, 6, 2) and stats["diverging"].shape == (4, 600)
    with torch.no_grad():
        exact = model.exact_posterior(x)
    idata = az.from_dict(posterior={"z": draws.numpy()})
    ess = torch.as_tensor(az.ess(idata)["z"].values)
    flat = draws.reshape(-1, 6, 2)
    assert torch.all((flat.mean(0) - exact.mean).abs() < 5 * exact.stddev / ess.sqrt())
    squares = az.from_dict(posterior={"z": ((draws - exact.mean) ** 2).numpy()})
    ess_squares = torch.as_tensor(az.ess(squares, method="mean")["z"].values)
    assert torch.all((flat.var(0) / exact.variance - 1).abs() < 5 * (2 / ess_squares).sqrt())
    assert float(az.rhat(idata)["z"].max()) <= 1.01
    assert not stats["diverging"].any()
    if "max_tree_depth" in options:
        assert int(stats["tree_depth"].max()) <= 3


def test_many_points_usage_errors(decoder_run):
    model, x = decoder_run.model, decoder_run.data.test_x[:6]
    with pytest.raises(ValueError, match="block_size must divide the 6 points"):
        sample_latents(model, x, chains=1, warmup=5, samples=5, block_size=4)
    with pytest.raises(ValueError, match="sampler must be one of nuts, chees"):
        sample_latents(model, x, chains=1, warmup=5, samples=5, sampler="hmc")


@pytest.mark.parametrize("flags", [["--block-size", "2"], ["--sampler", "chees"]])
def test_many_points_samplers_from_the_command_line(decoder_run, tmp_path, flags):
    out = tmp_path / "run"
    main(["--inference", "nuts", "--decoder-from", str(decoder_run.out), "--subset", "6", "--chains", "2",
          "--warmup", "40", "--samples", "30", "--compile", "off", "--out", str(out), "--no-progress", *flags])
    idata = az.from_netcdf(out / "posterior.nc")
    assert idata.posterior["z"].shape == (2, 30, 6, 2)
    assert idata.sample_stats["diverging"].shape == (2, 30)
    assert json.loads((out / "config.json").read_text())["mcmc"][flags[0][2:].replace("-", "_")] in (2, "chees")
