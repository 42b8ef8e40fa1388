"""Evaluation against the linear-Gaussian model, whose log p(x) and p(z | x) are exact."""

import json
import math

import pyro.distributions as dist
import pytest
import torch

import pyro_vae as pv
import pyro_vae.program.estimators as estimators_module
from conftest import fit_linear_gaussian
from pyro_vae.program.estimators import active_units, elbo_terms, evaluate, log_likelihood
from pyro_vae.evaluate import main
from pyro_vae.models.linear_gaussian import LinearGaussian
from pyro_vae.plumbing.registry import register_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """linear_gaussian fitted by SVI with the amortized guide (about 5 s)."""
    return fit_linear_gaussian(tmp_path_factory.mktemp("lg") / "run", epochs=200, iwae_samples=100)


def diagonal(q, scale=1.0):
    """A diagonal Gaussian proposal with the moments of q, its std scaled."""
    return dist.Normal(q.mean, scale * q.variance.sqrt()).to_event(1)


def test_exact_posterior_proposal_gives_exact_log_likelihood_per_example(trained):
    model, x = trained.model, trained.data.test_x
    ll = log_likelihood(model, model.exact_posterior, x, num_samples=3)
    with torch.no_grad():
        exact = model.log_marginal(x)
    assert ll.shape == (len(x),)
    # with the true posterior every importance weight equals p(x)
    assert torch.allclose(ll, exact, atol=1e-3)


def test_importance_weighted_estimate_converges_to_exact(trained):
    model, x = trained.model, trained.data.test_x[:200]
    with torch.no_grad():
        exact = model.log_marginal(x).mean().item()
    proposal = lambda xb: diagonal(model.exact_posterior(xb), scale=2.0)  # noqa: E731  (a poor proposal)
    gaps = {k: exact - log_likelihood(model, proposal, x, num_samples=k).mean().item() for k in (1, 10, 1000)}
    assert gaps[1] > gaps[10] > gaps[1000] > -0.01  # a lower bound that tightens with K
    assert gaps[1] > 0.3
    assert abs(gaps[1000]) < 0.05
    # the trained encoder as proposal, K = 1000, as the issue asks
    encoder_ll = log_likelihood(model, trained.guide.posterior, x, num_samples=1000).mean().item()
    assert abs(encoder_ll - exact) < 0.05


class Replay(dist.Independent):
    """A diagonal Gaussian q whose draws are the next rows of a fixed ``pool``, each request
    recorded: estimates with different chunkings then see the very same particles."""

    def __init__(self, base, pool, requests):
        super().__init__(base, 1)
        self.pool, self.requests = pool, requests

    def sample(self, sample_shape=torch.Size()):
        (count,) = sample_shape
        used = sum(self.requests)
        self.requests.append(count)
        assert used + count <= len(self.pool)
        return self.pool[used: used + count]


def test_chunking_does_not_change_the_estimate(trained, monkeypatch):
    """Drawn in one chunk or in chunks of 7 particles (the last of 1), the same 400 particles give
    log (1/K) sum_k w_k to float rounding: every particle drawn once, none dropped, none added."""
    model, x = trained.model, trained.data.test_x[:50]
    q = diagonal(model.exact_posterior(x), scale=1.5)
    pool = q.sample((800,))  # twice what is needed: a chunking that draws too many sees other particles

    def estimate(chunk_elements):
        monkeypatch.setattr(estimators_module, "CHUNK_ELEMENTS", {"cpu": chunk_elements, "cuda": chunk_elements})
        requests = []
        ll = log_likelihood(model, lambda xb: Replay(q.base_dist, pool, requests), x, num_samples=400)
        return ll, requests

    whole, whole_requests = estimate(2**24)
    chunked, chunked_requests = estimate(len(x) * x.shape[1] * 7)  # 7 particles a chunk
    assert whole_requests == [400]
    assert chunked_requests == [7] * 57 + [1]
    with torch.no_grad():
        reference = estimators_module.log_weights(model, q, x, pool[:400]).logsumexp(0) - math.log(400)
    assert torch.allclose(whole, reference, rtol=0, atol=1e-5)
    assert torch.allclose(chunked, reference, rtol=0, atol=1e-5)


def test_elbo_of_any_guide_is_below_exact(trained):
    model, x = trained.model, trained.data.test_x
    with torch.no_grad():
        exact = model.log_marginal(x)
    from pyro_vae.plumbing.registry import get_guide

    untrained = get_guide("amortized")(model, trained.data.num_train, (16,))
    for proposal in (trained.guide.posterior, untrained.posterior, lambda xb: diagonal(model.exact_posterior(xb))):
        reconstruction, kl, elbo = elbo_terms(model, proposal, x)
        gap = exact - elbo
        assert gap.mean() > -3 * gap.std() / len(x) ** 0.5
        assert torch.allclose(elbo, reconstruction - kl)
    # the diagonal Gaussian with exact means and marginal variances is not the
    # mean-field optimum but it is a valid q: the bound holds strictly on average
    assert (exact - elbo).mean() > 0


def test_amortized_guide_recovers_exact_posterior_mean(trained):
    model, guide, x = trained.model, trained.guide, trained.data.test_x
    with torch.no_grad():
        exact = model.exact_posterior(x)
        q = guide.posterior(x)
    error = (q.mean - exact.mean).abs().mean()
    assert error < 0.25 * exact.stddev.mean(), (error, exact.stddev.mean())


def test_svi_maximum_likelihood_matches_closed_form_ppca(trained):
    model, x = trained.model, trained.data.train_x
    w, b, sigma = LinearGaussian.maximum_likelihood(x, 2)
    ml = LinearGaussian(x.shape[1], 2)
    with torch.no_grad():
        ml.weight.copy_(w)
        ml.bias.copy_(b)
        ml.raw_noise.copy_(torch.log(torch.expm1(sigma)))
        # the closed form really is the maximum: it beats the SVI fit, by little
        svi_ll, ml_ll = model.log_marginal(x).mean(), ml.log_marginal(x).mean()
        assert 0 <= ml_ll - svi_ll < 0.02
        assert abs(model.noise - sigma) / sigma < 0.03
        assert (model.bias - b).abs().max() < 0.05
        # W is identified up to rotation: compare W W^T
        gram, ml_gram = model.weight @ model.weight.T, w @ w.T
        assert (gram - ml_gram).norm() / ml_gram.norm() < 0.15


def test_active_units_counts_dimensions_that_vary_with_x():
    x = torch.randn(500, 3)
    proposal = lambda xb: dist.Normal(torch.stack([xb[:, 0], 0.01 * xb[:, 1], torch.zeros(len(xb))], -1), 1.0).to_event(1)  # noqa: E731
    count, variances = active_units(proposal, x)
    assert count == 1 and variances.shape == (3,)


def test_evaluate_reports_every_figure(trained):
    results = evaluate(trained.model, trained.guide.posterior, trained.data.test_x[:100], num_samples=50)
    for key in ["log_likelihood", "log_likelihood_se", "elbo", "reconstruction", "kl", "log_likelihood_minus_elbo",
                "active_units", "exact_log_likelihood"]:
        assert key in results
    assert results["active_units"] == 2
    assert results["log_likelihood"] >= results["elbo"] - 3 * results["elbo_se"]
    assert abs(results["log_likelihood"] - results["exact_log_likelihood"]) < 0.1


def test_fit_summary_has_log_likelihood(trained):
    summary = json.loads((trained.out / "summary.json").read_text())
    assert summary["log_likelihood_iwae_samples"] == 100
    assert summary["log_likelihood"] >= summary["test_elbo"] - 0.2


def test_evaluate_command_writes_eval_json(trained, capsys):
    main([str(trained.out), "--iwae-samples", "20", "--max-examples", "50", "--no-progress"])
    out = capsys.readouterr().out
    assert "log p(x), importance-weighted" in out and "log p(x), exact" in out
    results = json.loads((trained.out / "eval.json").read_text())
    assert results["num_examples"] == 50 and results["iwae_samples"] == 20 and results["split"] == "test"


def test_the_api_returns_what_the_command_writes_and_prints(trained, tmp_path, capsys):
    """pv.evaluate on the run directory, and on the run loaded into memory, gives the command's figures:
    the same seed, the same draws, bit for bit; the table printed is the Evaluation's."""
    main([str(trained.out), "--iwae-samples", "20", "--max-examples", "50", "--seed", "3", "--no-progress"])
    printed = capsys.readouterr().out
    written = json.loads((trained.out / "eval.json").read_text())
    settings = pv.EvaluateSettings(iwae_samples=20, max_examples=50, seed=3)
    from_dir = pv.evaluate(trained.out, settings, out=tmp_path / "a", progress=False)
    from_memory = pv.evaluate(pv.load_run(trained.out), settings, out=tmp_path / "b", progress=False)
    for evaluation, folder in [(from_dir, tmp_path / "a"), (from_memory, tmp_path / "b")]:
        assert evaluation.path == folder / "eval.json"
        again = json.loads(evaluation.path.read_text())
        assert {k: v for k, v in again.items() if k != "run_dir"} == {k: v for k, v in written.items() if k != "run_dir"}
        assert evaluation["log_likelihood"] == written["log_likelihood"]
        assert printed.startswith(evaluation.table() + "\n")
    assert from_dir["run_dir"] == written["run_dir"] == str(trained.out)
    assert pv.evaluate(pv.load_run(trained.out), settings, progress=False).path is None  # no folder: nothing written


def _exit(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


def test_evaluate_errors_are_one_line(tmp_path, capsys):
    code, err = _exit([str(tmp_path)], capsys)
    assert code == 2 and "checkpoint.pt: no checkpoint there" in err and len(err.splitlines()) == 1
    (tmp_path / "checkpoint.pt").write_text("not a checkpoint")
    code, err = _exit([str(tmp_path)], capsys)
    assert code == 2 and "checkpoint.pt: not a readable checkpoint" in err and len(err.splitlines()) == 1
    code, err = _exit([str(tmp_path), "--iwae-samples", "0"], capsys)
    assert code == 2 and "positive integer" in err
    code, err = _exit([str(tmp_path), "--device", "bernoulli_mlp"], capsys)  # found by the fuzzing test
    assert code == 2 and "not a device" in err and len(err.splitlines()) == 1


def test_evaluate_estimator_ais_and_bdmc_against_the_exact_answer(trained, capsys):
    main([str(trained.out), "--estimator", "ais", "--ais-start", "q", "--ais-steps", "100", "--ais-chains", "8",
          "--max-examples", "30",
          "--iwae-samples", "200", "--bdmc", "--no-progress"])
    results = json.loads((trained.out / "eval.json").read_text())
    assert abs(results["ais"]["log_likelihood"] - results["exact_log_likelihood"]) < 0.05
    assert len(results["ais"]["per_example"]) == 30 and results["ais"]["log_likelihood_se"] > 0
    # from the prior in 100 steps the bracket is loose on this peaked posterior; tests/test_ais.py checks its exactness
    assert results["bdmc"]["lower"] <= results["bdmc"]["upper"] + 1e-3 and results["bdmc"]["width"] < 1.0
    assert "log p(x), AIS" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--ais-steps", "0"], "expected a positive integer"),
    (["--ais-chains", "0"], "expected a positive integer"),
    (["--estimator", "nonesuch"], "invalid choice"),
])
def test_evaluate_ais_usage_errors(trained, args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(trained.out), *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


class Unsampleable(dist.Normal):
    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError


@register_model("unsampleable_linear_gaussian_test")
class UnsampleableLinearGaussian(LinearGaussian):
    """A likelihood with a density but no sampler: BDMC cannot simulate data from it."""

    def likelihood(self, z):
        return Unsampleable(z @ self.weight.T + self.bias, self.noise).to_event(1)


def test_bdmc_on_a_model_that_cannot_simulate_is_a_usage_error(tmp_path, capsys):
    pv.fit(pv.FitConfig(dataset="linear_gaussian", model="unsampleable_linear_gaussian_test", epochs=1,
                  out=str(tmp_path / "run")), progress=False, log=lambda *a: None)
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "run"), "--bdmc", "--ais-steps", "5", "--ais-chains", "2", "--max-examples", "5",
              "--iwae-samples", "5", "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "cannot simulate" in err and len(err.strip().splitlines()) == 1
