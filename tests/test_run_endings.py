"""A run ends with a complete directory whatever the model's latents look like (issue #36): the
checkpoint, metrics and summary first, then each figure drawn on what it can show or skipped with a
one-line note, never a traceback. The models are written as a user writes them (docs/extending.md)."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import fit
from pyro_vae.models import LatentVariableModel
from pyro_vae.nn import data_plate, mlp
from pyro_vae.plumbing.registry import register_guide, register_model
from pyro_vae.runs import figures
from pyro_vae.runs.config import EvaluationSettings, FitConfig
from pyro_vae.runs.run_figures import CannotDraw, image_means

ROWS = 2  # the (ROWS, L) latent's first dimension


@register_model("endings_grid_latent")
class GridLatent(LatentVariableModel):
    """z_i ~ N(0, I) with event shape (2, L), x_i ~ Bernoulli(f(z_i flattened))."""

    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(16,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = mlp([ROWS * latent_dim, *reversed(hidden_dims), data_dim])

    def forward(self, x, idx=None, num_data=None):
        with self.weights(), data_plate(x, idx, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), ROWS, self.latent_dim), 1.0).to_event(2))
            pyro.sample("x", dist.Bernoulli(logits=self.decode(z.flatten(-2))).to_event(1), obs=x)


@register_model("endings_two_sites")
class TwoSites(nn.Module):
    """A plain Pyro program: a style z_i ~ N(0, I_L) and a scalar intensity s_i ~ N(0, 1), each its
    own site, x_i ~ Bernoulli(f(z_i, s_i))."""

    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(16,)):
        super().__init__()
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.decoder = mlp([latent_dim + 1, *reversed(hidden_dims), data_dim])

    def forward(self, x, idx=None, num_data=None):
        pyro.module("endings_two_sites", self)
        with pyro.plate("data", num_data or len(x), subsample=idx, device=x.device):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.latent_dim), 1.0).to_event(1))
            s = pyro.sample("s", dist.Normal(x.new_zeros(len(x)), 1.0))
            logits = self.decoder(torch.cat([z, s.unsqueeze(-1)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


@register_model("endings_lognormal")
class LogNormalLatent(LatentVariableModel):
    """Positive intensities z_i ~ LogNormal(0, 1) on (0, inf)^L, x_i ~ Bernoulli(f(log z_i))."""

    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(16,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), data_dim])

    def prior(self, x):
        return dist.LogNormal(x.new_zeros(len(x), self.latent_dim), 1.0).to_event(1)

    def likelihood(self, z):
        return dist.Bernoulli(logits=self.decode(z.log())).to_event(1)


class Encoder(nn.Module):
    """An amortized q(z | x): one network giving a location and a log scale per latent number."""

    amortized = True

    def __init__(self, model, num_data, hidden_dims=(16,)):
        super().__init__()
        self.sizes = self.latent_sizes(model)
        self.net = mlp([model.data_dim, *hidden_dims, 2 * sum(self.sizes.values())])

    def parameters_of(self, x):
        loc, log_scale = self.net(x).chunk(2, -1)
        return loc.split(list(self.sizes.values()), -1), log_scale.clamp(-6, 2).exp().split(list(self.sizes.values()),
                                                                                               -1)

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        with pyro.plate("data", num_data or len(x), subsample=idx, device=x.device):
            self.sample_sites(x)


@register_guide("endings_grid_latent")
class GridEncoder(Encoder):
    def latent_sizes(self, model):
        return {"z": ROWS * model.latent_dim}

    def posterior(self, x, idx=None, key=None, fixed=None):
        """q(z | x) as one distribution, event shape (2, L): its mean is a tensor (N, 2, L)."""
        (loc,), (scale,) = self.parameters_of(x)
        return dist.Normal(loc.unflatten(-1, (ROWS, -1)), scale.unflatten(-1, (ROWS, -1))).to_event(2)

    def sample_sites(self, x):
        pyro.sample("z", self.posterior(x))


@register_guide("endings_two_sites")
class TwoSitesEncoder(Encoder):
    def latent_sizes(self, model):
        return {"z": model.latent_dim, "s": 1}

    def sample_sites(self, x):
        (z_loc, s_loc), (z_scale, s_scale) = self.parameters_of(x)
        pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
        pyro.sample("s", dist.Normal(s_loc.squeeze(-1), s_scale.squeeze(-1)))


@register_guide("endings_lognormal")
class LogNormalEncoder(Encoder):
    def latent_sizes(self, model):
        return {"z": model.latent_dim}

    def sample_sites(self, x):
        (loc,), (scale,) = self.parameters_of(x)
        pyro.sample("z", dist.LogNormal(loc, scale).to_event(1))


def fit_user_model(name, out, **settings):
    lines = []
    config = FitConfig(**{"model": name, "guide": name, "dataset": "digits", "binarize": "static", "epochs": 1,
                          "hidden_dims": (16,), "out": str(out), "device": "cpu",
                          "evaluation": EvaluationSettings(iwae_samples=4, max_examples=20), **settings})
    return fit(config, progress=False, log=lines.append), lines


RUN_FILES = {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "elbo.png", "latent.png",
             "reconstructions.png", "samples.png"}


@pytest.mark.parametrize("name, latent_dim, names", [
    ("endings_grid_latent", 1, ["z[0, 0]", "z[1, 0]"]),  # the (2, L) latent: two numbers, each named
    ("endings_grid_latent", 3, [f"z[{i}, {j}]" for i in range(2) for j in range(3)]),  # the traceback
    ("endings_two_sites", 1, ["z[0]", "s"]),
    ("endings_lognormal", 2, ["z[0]", "z[1]"]),
])
def test_a_user_model_ends_with_a_complete_run_directory(tmp_path, monkeypatch, name, latent_dim, names):
    drawn = {}
    original = figures.save_latent_scatter

    def recording_scatter(path, z, labels=None, **options):
        drawn.update(points=z, labels=labels, names=options["names"])
        return original(path, z, labels, **options)

    monkeypatch.setattr(figures, "save_latent_scatter", recording_scatter)
    result, lines = fit_user_model(name, tmp_path / "run", latent_dim=latent_dim)
    assert {p.name for p in (tmp_path / "run").iterdir()} == RUN_FILES
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["notes"] == [] and summary == result.summary
    assert not [line for line in lines if line.startswith("note:")]
    # every number of every test point laid end to end, one row per point, one name per number
    assert tuple(drawn["points"].shape) == (300, len(names)) and len(drawn["labels"]) == 300
    assert drawn["names"] == names


def test_the_checkpoint_metrics_and_summary_are_written_before_any_figure(tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("the first figure failed")

    monkeypatch.setattr(figures, "save_elbo_curves", failing)
    with pytest.raises(RuntimeError, match="first figure"):
        fit_user_model("bernoulli_mlp", tmp_path / "run", guide="amortized")
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"config.json", "metrics.jsonl", "summary.json",
                                                             "checkpoint.pt"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 1


def test_figures_that_do_not_fit_are_skipped_with_a_note(tmp_path):
    _, lines = fit_user_model("linear_gaussian", tmp_path / "lg", guide="amortized", dataset="linear_gaussian",
                              binarize=None)
    note = "reconstructions.png and samples.png skipped: the data are not images"
    assert f"note: {note}" in lines
    assert json.loads((tmp_path / "lg" / "summary.json").read_text())["notes"] == [note]
    assert {p.name for p in (tmp_path / "lg").iterdir()} == RUN_FILES - {"reconstructions.png", "samples.png"}


def test_em_ends_like_every_run_and_leaves_the_callers_config_as_it_was(tmp_path):
    config = FitConfig(inference="em", model="gmm", dataset="digits", epochs=2, out=str(tmp_path / "em"),
                       device="cpu", evaluation=EvaluationSettings(max_examples=50))
    before = config.as_dict()
    result = fit(config, progress=False, log=lambda *a: None)
    assert config.as_dict() == before
    assert (result.config.guide, result.config.elbo, config.guide, config.elbo) == ("enumerated", "enum",
                                                                                     "amortized", "trace")
    note = "reconstructions.png and samples.png skipped: the model has no continuous latent to decode"
    assert result.summary["notes"] == [note]
    assert {p.name for p in (tmp_path / "em").iterdir()} == RUN_FILES - {"reconstructions.png", "samples.png"}


def test_a_likelihood_without_a_mean_is_not_drawn():
    class LogitNormalPixels(LatentVariableModel):
        name = "logit_normal_pixels"

        def __init__(self):
            super().__init__(4, 2)
            self.decoder = nn.Linear(2, 4)

        def likelihood(self, z):
            pixels = dist.TransformedDistribution(dist.Normal(self.decode(z), 0.1), [dist.transforms.SigmoidTransform()])
            return pixels.to_event(1)

    x, z = torch.rand(3, 4), torch.randn(3, 2)
    with pytest.raises(CannotDraw, match="no mean"):
        image_means(LogitNormalPixels(), None, x, z, (2, 2))
    with pytest.raises(CannotDraw, match=r"shape \(4,\) per point, the images \(3, 3\)"):
        image_means(GridLatent(4, 1), None, x, torch.randn(3, ROWS, 1), (3, 3))
