"""The figures of a fitted run (SVI or EM): computed before its summary, drawn after it.

- ``elbo.png``: train and test ELBO per epoch;
- ``latent.png``: q's means of the test points, coloured by label, the
  latents laid end to end (every site, every event dimension) and named so
  on the axes; beyond two numbers, their first two principal components;
- ``reconstructions.png``: test images (odd rows) and E[x | z] at q's mean
  (even rows);
- ``samples.png``: E[x | z] at 64 draws z ~ p(z).

:func:`run_figures` computes what each figure shows, with the random draws
some of them make (a test-time fit, a Monte Carlo mean of a guide's
program, prior draws, a Bayesian decoder's weights) in the order runs have
always made them, so that the estimates drawn after them (the SVI run's
log p(x)) do not move; ``rundir.finish_run`` draws them only after the
checkpoint, metrics and summary are written. A figure that does not fit the
model (no continuous latent, data that are not images, a p(x | z) without a
mean the images' size) is skipped with a one-line note saying why.
"""

import itertools
import math
from functools import partial
from typing import NamedTuple

import torch

from pyro_vae.program.density import layout_of, observation, plug_in_values, prior_draws
from pyro_vae.program.posteriors import flat_mean, guide_posterior
import pyro_vae.runs.figures as figures

LATENT_POINTS = 2000  # the test points of latent.png
RECONSTRUCTED = 32  # the test images of reconstructions.png
SAMPLES = 64  # the prior draws of samples.png
IMAGE_FIGURES = "reconstructions.png and samples.png"  # drawn or skipped together: one decoder


class CannotDraw(Exception):
    """A figure that does not fit the model; the message says why, in a few words."""


class RunFigures(NamedTuple):
    """What a run's figures show: ``drawings``, (file name, a function of the file's path that draws
    it), and ``notes``, one line per figure skipped."""

    drawings: list
    notes: list


def decoder_means(model, guide, x, z, draws=16):
    """E[x | z] for the rows ``x`` (which may carry inputs the model conditions on); with a Bayesian
    decoder, averaged over ``draws`` theta ~ q(theta)."""
    if not getattr(model, "bayesian_decoder", False):
        return observation(model, x, z).mean
    total = 0.0
    for _ in range(draws):
        theta = {f"decoder.{name}": value for name, value in guide.decoder_posterior.sample().items()}
        total = total + observation(model, x, z, theta).mean
    return total / draws


def image_means(model, guide, x, z, image_shape):
    """:func:`decoder_means`, or :class:`CannotDraw` where they are not images of ``image_shape``."""
    try:
        means = decoder_means(model, guide, x, z)
    except NotImplementedError:  # torch.distributions' default: a distribution without a closed-form mean
        raise CannotDraw("p(x | z) has no mean to draw") from None
    if means.shape != (len(x), math.prod(image_shape)):
        raise CannotDraw(f"the mean of p(x | z) has shape {tuple(means.shape[1:])} per point, "
                         f"the images {tuple(image_shape)}")
    return means


def coordinate_names(z_mean, layout):
    """The names of the numbers of ``z_mean`` laid end to end, as ``flat_mean`` lays them: ``z[0]``,
    ``z[0, 1]``, or a scalar site's own name."""
    sites = z_mean.items() if isinstance(z_mean, dict) else [((layout.names or layout.discrete or ("z",))[0], z_mean)]
    names = []
    for name, value in sites:
        shape = tuple(value.shape[1:])
        names += [f"{name}[{', '.join(map(str, index))}]" if shape else name
                  for index in itertools.product(*map(range, shape))]
    return names


def latent_drawing(z_mean, labels, layout):
    """``latent.png``'s drawing of the means ``z_mean`` (a tensor or a dict of sites), laid end to end."""
    points = flat_mean(z_mean)
    points = points.reshape(len(points), -1)  # a site of event shape (2, L): its numbers in a row
    if points.shape[1] == 0:
        raise CannotDraw("the model has no latent numbers to place")
    if not torch.isfinite(points).all():
        raise CannotDraw("some posterior means are not finite")
    return partial(figures.save_latent_scatter, z=points, labels=labels, names=coordinate_names(z_mean, layout))


def image_drawings(model, guide, data, x, z_mean):
    """``reconstructions.png`` (E[x | z] at the means ``z_mean`` of the first test images) and
    ``samples.png`` (at draws of p(z)), in that order: their draws come in this order."""
    if data.image_shape is None:
        raise CannotDraw("the data are not images")
    if not layout_of(model, x).continuous:  # a mixture: no decoder at a mean z
        raise CannotDraw("the model has no continuous latent to decode")
    first = ({name: value[:RECONSTRUCTED] for name, value in z_mean.items()} if isinstance(z_mean, dict)
             else z_mean[:RECONSTRUCTED])
    shown = x[:RECONSTRUCTED]
    reconstruction = image_means(model, guide, shown, first, data.image_shape)
    rows = x[torch.arange(SAMPLES, device=x.device) % len(x)]  # inputs a conditional model reads, beside z
    layout = layout_of(model, rows)
    z = torch.randn(SAMPLES, layout.dim, device=data.device) if layout.is_identity() else prior_draws(model, rows)
    samples = image_means(model, guide, rows, z, data.image_shape)
    return [("reconstructions.png", partial(figures.save_reconstructions, x=shown, reconstruction=reconstruction,
                                            image_shape=data.image_shape)),
            ("samples.png", partial(figures.save_image_grid, rows=samples, image_shape=data.image_shape))]


@torch.no_grad()
def run_figures(model, guide, data, metrics):
    """The :class:`RunFigures` of a fitted model and guide on ``data``, with the run's ``metrics``."""
    drawings, notes = [("elbo.png", partial(figures.save_elbo_curves, metrics=metrics))], []
    model.eval()
    guide.eval()
    x = data.test_x[:LATENT_POINTS]
    z_mean = guide_posterior(guide, x, fixed=plug_in_values(model, guide)).mean
    labels = None if data.test_y is None else data.test_y[:LATENT_POINTS]
    try:
        drawings.append(("latent.png", latent_drawing(z_mean, labels, layout_of(model, x))))
    except CannotDraw as reason:
        notes.append(f"latent.png skipped: {reason}")
    try:
        drawings += image_drawings(model, guide, data, x, z_mean)
    except CannotDraw as reason:
        notes.append(f"{IMAGE_FIGURES} skipped: {reason}")
    return RunFigures(drawings, notes)
