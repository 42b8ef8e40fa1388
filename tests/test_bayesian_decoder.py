"""--bayesian-decoder: N(0, I) priors on decoder weights and a mean-field q(theta) ("full VB")."""

import copy
import json

import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.evaluate import main as evaluate_main
from pyro_vae.runs.assembly import build
from pyro_vae.runs.config import EvaluationSettings
from pyro_vae.program.density import log_joint, plug_in_values
from pyro_vae import FitConfig, fit, load_run
from pyro_vae.data import load_dataset

QUIET = {"progress": False, "log": lambda *a: None}


def test_weight_sites_sit_outside_the_data_plate():
    data = load_dataset("digits")
    model, guide = build(FitConfig(hidden_dims=(16,), bayesian_decoder=True), data)
    idx = torch.arange(10)
    x = data.train_batch(idx)
    guide_trace = poutine.trace(guide).get_trace(x, idx, data.num_train)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, idx, data.num_train)
    weights = [name for name in model_trace.nodes if name.startswith("decoder.")]
    assert sorted(weights) == ["decoder.0.bias", "decoder.0.weight", "decoder.2.bias", "decoder.2.weight"]
    for name in weights:
        # scale 1: KL(q(theta) || p(theta)) enters each full-data ELBO estimate once, not N / B times
        assert model_trace.nodes[name]["scale"] == 1.0 and guide_trace.nodes[name]["scale"] == 1.0
        assert not model_trace.nodes[name]["cond_indep_stack"]
        # the model ran with the weights q(theta) drew
        assert torch.equal(model_trace.nodes[name]["value"], guide_trace.nodes[name]["value"])
    assert model_trace.nodes["z"]["scale"] == pytest.approx(data.num_train / 10)


def test_full_vb_elbo_is_below_point_estimate_elbo_and_finite(tmp_path):
    point = fit(FitConfig(epochs=3, hidden_dims=(32,), out=str(tmp_path / "point"), evaluation=EvaluationSettings(20)), **QUIET)
    full = fit(FitConfig(epochs=3, hidden_dims=(32,), bayesian_decoder=True, out=str(tmp_path / "full"),
                         evaluation=EvaluationSettings(20)), **QUIET)
    for m in full.metrics:
        assert torch.isfinite(torch.tensor([m["train_elbo"], m["test_elbo"]])).all()
    # the full-VB bound pays KL(q(theta) || p(theta)) / N per example on top
    assert all(f["train_elbo"] <= p["train_elbo"] for f, p in zip(full.metrics, point.metrics))
    assert torch.isfinite(torch.tensor(full.summary["log_likelihood"]))
    assert (tmp_path / "full" / "samples.png").stat().st_size > 0


def test_bayesian_decoder_with_meanfield_and_evaluate(tmp_path, capsys):
    result = fit(FitConfig(guide="meanfield", epochs=2, hidden_dims=(16,), bayesian_decoder=True,
                           out=str(tmp_path / "run"), evaluation=EvaluationSettings(10, 30)), **QUIET)
    assert result.metrics[-1]["test_elbo"] is not None
    model, guide, data, config, _ = load_run(tmp_path / "run")
    assert config.bayesian_decoder and model.bayesian_decoder
    # evaluation conditions the program's weight sites on E_q[theta]: the same
    # density as a point-estimate decoder holding those weights
    fixed = plug_in_values(model, guide)
    assert sorted(fixed) == ["decoder.0.bias", "decoder.0.weight", "decoder.2.bias", "decoder.2.weight"]
    point = copy.deepcopy(model)
    point.bayesian_decoder = False
    with torch.no_grad():
        for name, value in guide.decoder_posterior.mean().items():
            point.decoder.get_parameter(name).copy_(value)
    x, z = data.test_x[:5], torch.randn(3, 5, model.latent_dim)
    assert torch.allclose(log_joint(model, x, z, fixed), log_joint(point, x, z))
    assert not torch.allclose(log_joint(model, x, z, fixed), log_joint(model, x, z, {k: v + 0.1 for k, v in fixed.items()}))
    evaluate_main([str(tmp_path / "run"), "--iwae-samples", "10", "--max-examples", "20", "--no-progress"])
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["num_examples"] == 20


def test_bayesian_decoder_needs_a_decoder_network(tmp_path):
    from pyro_vae.plumbing.cli import UsageError

    with pytest.raises(UsageError, match="needs a model with a decoder network"):
        fit(FitConfig(dataset="linear_gaussian", model="linear_gaussian", bayesian_decoder=True, epochs=1,
                      out=str(tmp_path / "r")), **QUIET)
