"""The discrete-latent VAE (issue #27, part B): ``--model categorical_mlp``, its encoder, exact
enumeration, the Gumbel-softmax objectives (``pyro_vae.objectives.relaxed``), and its evaluation and comparison."""

import itertools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.compare import main as compare_main
from pyro_vae.evaluate import main as evaluate_main
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.runs.config import EvaluationSettings, FitConfig
from pyro_vae.program.density import MAX_ENUMERATION, log_joint
from pyro_vae import fit
from pyro_vae.fit import main as fit_main
from pyro_vae.objectives import make_objective
from pyro_vae.plumbing.registry import get_guide, get_model
from pyro_vae.runs.rundir import load_run
from pyro_vae.objectives.relaxed import Temperature

QUIET = {"progress": False, "log": lambda *a: None}


@pytest.fixture(autouse=True)
def no_validation():
    with pyro.validation_enabled(False):
        yield


def tiny(latent_dim=2, categories=3, data_dim=6, seed=0):
    """A small model and encoder with random weights, and 4 binary points."""
    torch.manual_seed(seed)
    model = get_model("categorical_mlp")(data_dim, latent_dim, (8,), categories=categories)
    guide = get_guide("categorical_mlp")(model, 4, (8,))
    x = torch.bernoulli(torch.full((4, data_dim), 0.4))
    return model, guide, x


def brute_force(model, guide, x):
    """(log p(x), ELBO of the encoder) per row by an explicit loop over the K^M configurations."""
    m, k = model.latent_dim, model.categories
    q = torch.log_softmax(guide.logits(x), -1)  # (N, M, K)
    eye = torch.eye(k)
    log_px, elbo = torch.full((len(x),), -math.inf), torch.zeros(len(x))
    for digits in itertools.product(range(k), repeat=m):
        z = torch.cat([eye[d] for d in digits]).expand(len(x), -1)
        log_joint_value = -m * math.log(k) + dist.Bernoulli(logits=model.decoder(z)).log_prob(x).sum(-1)
        log_q = sum(q[:, i, d] for i, d in enumerate(digits))
        log_px = torch.logaddexp(log_px, log_joint_value)
        elbo = elbo + log_q.exp() * (log_joint_value - log_q)
    return log_px, elbo


@pytest.mark.parametrize("latent_dim,categories", [(1, 5), (2, 3), (3, 2)])
@torch.no_grad()
def test_enumerated_log_px_equals_brute_force_summation(latent_dim, categories):
    model, guide, x = tiny(latent_dim, categories)
    expected, _ = brute_force(model, guide, x)
    assert torch.allclose(model.log_marginal(x), expected, atol=1e-5)
    assert torch.allclose(log_joint(model, x, {}), expected, atol=1e-5)  # density.py's parallel enumeration
    assert torch.allclose(model.brute_force_log_marginal(x), expected, atol=1e-5)


def test_enum_objective_is_the_exact_elbo_of_the_encoder():
    model, guide, x = tiny()
    _, elbo = brute_force(model, guide, x)
    assert make_objective("enum").loss(model, guide, x) == pytest.approx(-elbo.sum().item(), abs=1e-4)


def test_log_marginal_is_none_beyond_the_enumeration_limit():
    model, guide, x = tiny(latent_dim=13, categories=2)  # 8192 > 4096
    assert model.configurations > MAX_ENUMERATION and model.log_marginal(x) is None
    q = guide.posterior(x)
    z = q.sample((3,))
    assert log_joint(model, x, z).shape == (3, 4)  # importance sampling: z from the encoder, no enumeration


def gradients(objective, model, guide, x):
    params = [p for module in (model, guide) for p in module.parameters()]
    for p in params:
        p.grad = None
    objective.loss_and_grads(model, guide, x)
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def estimator_mean(objective, model, guide, x, replicas=500, repeats=20):
    """(mean, standard error) per coordinate of the gradient estimator on ``x``: each of ``repeats``
    estimates averages ``replicas`` independent draws (x repeated, the gradient divided back)."""
    rows = x.repeat(replicas, 1)
    draws = torch.stack([gradients(objective, model, guide, rows) / replicas for _ in range(repeats)])
    return draws.mean(0), draws.std(0) / math.sqrt(repeats)


def test_score_function_gradient_agrees_with_the_exact_gradient_in_expectation():
    model, guide, x = tiny()
    exact = gradients(make_objective("enum"), model, guide, x)
    mean, se = estimator_mean(make_objective("score-function", baseline="average"), model, guide, x)
    z = (mean - exact) / se.clamp_min(1e-9)
    assert z.abs().max() < 5, f"max |z| {z.abs().max():.2f}"


def test_relaxed_gradient_approaches_the_exact_gradient_as_the_temperature_falls():
    model, guide, x = tiny()
    exact = gradients(make_objective("enum"), model, guide, x)
    encoder = sum(p.numel() for p in guide.parameters())
    errors = []
    for tau in (1.0, 0.3, 0.1):
        objective = make_objective("relaxed", temperature=Temperature(tau, tau, 0.0))
        mean, _ = estimator_mean(objective, model, guide, x)
        errors.append(((mean - exact)[-encoder:].norm() / exact[-encoder:].norm()).item())
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] > 0.05 and errors[2] < 0.02, errors  # biased at tau = 1, close at 0.1


def test_temperature_is_annealed_per_step():
    objective = make_objective("relaxed-st", temperature=Temperature(1.0, 0.5, 0.1))
    model, guide, x = tiny()
    assert objective.temperature == 1.0
    for _ in range(3):
        objective.loss_and_grads(model, guide, x)
    assert objective.temperature == pytest.approx(math.exp(-0.3))
    objective.step = 100
    assert objective.temperature == 0.5


@pytest.fixture(scope="module")
def enum_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("categorical") / "run"
    config = FitConfig(model="categorical_mlp", guide="categorical_mlp", dataset="digits", latent_dim=2, categories=4,
                       hidden_dims=(16,), epochs=2, num_train=300, num_test=40, elbo="enum", lr=1e-2, out=str(out),
                       evaluation=EvaluationSettings(iwae_samples=20, max_examples=20))
    with pyro.validation_enabled(False):
        fit(config, **QUIET)
    return out


def test_evaluate_reports_the_exact_log_px_and_is_close_to_it(enum_run):
    assert json.loads((enum_run / "config.json").read_text())["categories"] == 4  # the model is rebuilt with K = 4
    evaluate_main([str(enum_run), "--iwae-samples", "500", "--max-examples", "30", "--no-progress"])
    results = json.loads((enum_run / "eval.json").read_text())
    exact, sampled = results["exact_log_likelihood"], results["log_likelihood"]
    assert sampled == pytest.approx(exact, abs=0.02)  # 16 configurations, 500 draws from q
    assert results["elbo"] <= exact + 0.05


def test_compare_has_an_exact_row_and_the_gap(enum_run, tmp_path):
    """The inference gap log p(x) - ELBO(q) against both sides summed over the 16 configurations by
    ``brute_force``, independently of the comparison's estimators."""
    compare_main(["--run", str(enum_run), "--subset", "20", "--iwae-samples", "200", "--elbo-samples", "200",
                  "--out", str(tmp_path / "cmp"), "--no-progress"])
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    run = load_run(enum_run, torch.device("cpu"))
    with torch.no_grad():
        log_px, elbo = brute_force(run.model, run.guide, run.data.test_x[:20])
    assert report["exact"]["log_likelihood"] == pytest.approx(float(log_px.mean()), abs=1e-4)
    assert report["amortized"]["log_likelihood"] == pytest.approx(float(log_px.mean()), abs=0.05)
    gap = log_px - elbo  # KL(q || p) per point, exactly
    assert float(gap.mean()) > 0.03  # a 2-epoch encoder is measurably off the exact posterior
    assert report["inference_gap"] == pytest.approx(float(gap.mean()), abs=0.02)
    assert report["inference_gap_se"] == pytest.approx(float(gap.std() / math.sqrt(20)), rel=0.3)


@pytest.mark.parametrize("elbo", ["relaxed", "relaxed-st", "score-function", "rws", "wake-sleep"])
def test_every_discrete_objective_trains_the_model(elbo, tmp_path):
    config = FitConfig(model="categorical_mlp", guide="categorical_mlp", dataset="digits", latent_dim=20, categories=10,
                       hidden_dims=(16,), epochs=1, num_train=200, num_test=20, elbo=elbo, out=str(tmp_path / elbo),
                       baseline="average" if elbo == "score-function" else "none",
                       evaluation=EvaluationSettings(iwae_samples=10, max_examples=10))
    result = fit(config, **QUIET)
    assert math.isfinite(result.summary["log_likelihood"]) and math.isfinite(result.summary["test_elbo"])
    if elbo == "relaxed":  # 10^20 configurations: evaluate importance-samples and reports no exact log p(x)
        evaluate_main([str(tmp_path / elbo), "--iwae-samples", "20", "--max-examples", "10", "--no-progress"])
        results = json.loads((tmp_path / elbo / "eval.json").read_text())
        assert "exact_log_likelihood" not in results and math.isfinite(results["log_likelihood"])


def fit_error(capsys, *flags):
    with pytest.raises(SystemExit) as stopped:
        fit_main(["--model", "categorical_mlp", "--guide", "categorical_mlp", "--epochs", "1", *flags])
    err = capsys.readouterr().err.strip()
    return stopped.value.code, err


@pytest.mark.parametrize("flags,message", [
    (("--elbo", "relaxed", "--temperature", "0"), "--temperature"),
    (("--elbo", "relaxed-st", "--min-temperature", "-1"), "--min-temperature"),
    (("--elbo", "enum", "--latent-dim", "20"), "more than the 4096 enumerated"),
    (("--elbo", "iwae"), "draws discrete z"),
    (("--elbo", "meanfield"), "draws discrete z"),
    (("--elbo", "trace", "--temperature", "0.3"), "apply to --elbo relaxed"),
    (("--guide", "amortized"), "samples no value for the model's latent site"),
])
def test_bad_input_is_one_line_and_status_2(capsys, flags, message):
    code, err = fit_error(capsys, *flags)
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_a_non_positive_temperature_is_a_usage_error_in_the_api():
    with pytest.raises(UsageError, match="must be positive"):
        FitConfig(elbo="relaxed", temperature=0.0).validate()
    with pytest.raises(UsageError, match="relaxes one-hot latents"):
        from pyro_vae.runs.assembly import build
        from pyro_vae.data import load_dataset
        build(FitConfig(model="bernoulli_mlp", elbo="relaxed"), load_dataset("digits", None, None, torch.device("cpu")))


def test_nuts_and_ais_refuse_a_model_without_continuous_latents(enum_run, capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        evaluate_main([str(enum_run), "--estimator", "ais", "--max-examples", "5", "--no-progress"])
    assert stopped.value.code == 2 and "has none" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        fit_main(["--inference", "nuts", "--decoder-from", str(enum_run), "--subset", "4", "--out", str(tmp_path / "n")])
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and len(err.splitlines()) == 1 and "no continuous latent" in err
