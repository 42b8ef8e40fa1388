"""The Gumbel-softmax estimators of a discrete-latent ELBO's gradient: ``--elbo relaxed`` and ``relaxed-st``.

The reparameterisation trick needs a continuous z. For one-hot latents (``OneHotCategorical`` sites,
as in the ``categorical_mlp`` model) Jang, Gu & Poole (2016) and Maddison, Mnih & Teh (2016) draw
instead from the Gumbel-softmax (concrete) relaxation y = softmax((log pi + g) / tau), g Gumbel(0, 1),
which is differentiable in pi and tends to a one-hot draw from Categorical(pi) as tau -> 0.

The model stays the same program; the relaxation belongs to the estimator. :class:`Relax` is a poutine
messenger that, around the guide, swaps every unobserved per-point ``OneHotCategorical`` site for
``RelaxedOneHotCategorical(tau, logits)`` (or ``RelaxedOneHotCategoricalStraightThrough``) and keeps the
discrete q it replaced; the model is then replayed at the relaxed values. :class:`RelaxedELBO`'s loss,
as Jang et al. compute it, is

    -(N/B) sum_i [ log p(x_i | y_i) - sum_m KL(q(z_im | x_i) || p(z_im)) ],

the KL between the discrete q and the prior (uniform here) in closed form, y_i the relaxed draw. With
``relaxed`` (Gumbel-softmax) y is a point of the simplex, not a one-hot: the decoder is evaluated off the
discrete model's support, so the loss estimates a relaxed surrogate of the ELBO, not a bound on
log p(x) of the discrete model; it tends to the ELBO as tau -> 0 (with a variance that grows).
With ``relaxed-st`` (straight-through Gumbel-softmax) the forward value is the one-hot
argmax, distributed exactly as q: the loss is an unbiased estimate of -ELBO of the discrete model, and
its gradient (through the soft y) is biased. Continuous latent sites of the same program, if any, enter
as ``Trace_ELBO``'s terms log p - log q at their reparameterised draws.

The temperature is annealed over SVI steps t as Jang et al. do: tau_t = max(tau_min, tau_0 exp(-r t))
(``--temperature`` tau_0, ``--min-temperature`` tau_min, ``--anneal-rate`` r). A resumed run goes on from its t.
"""

import math
from typing import NamedTuple

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger

from pyro_vae.objectives.primitives import data_scale, per_point_sites, plates_scale, point_log_prob
from pyro_vae.program.density import is_per_point


class Temperature(NamedTuple):
    """tau_t = max(``minimum``, ``initial`` exp(-``rate`` t)) at SVI step t = 0, 1, ..."""

    initial: float = 1.0
    minimum: float = 0.5
    rate: float = 1e-4

    def at(self, step):
        return max(self.minimum, self.initial * math.exp(-self.rate * step))


RELAXES = "relaxes"  # the key of a relaxed site's infer dict that holds the discrete q it replaced


class Relax(Messenger):
    """Unobserved per-point ``OneHotCategorical`` sites draw from their relaxation at ``temperature``;
    each such site keeps the discrete distribution it replaced in ``infer[RELAXES]``."""

    def __init__(self, temperature, straight_through=False):
        super().__init__()
        self.temperature, self.straight_through = temperature, straight_through

    def _pyro_sample(self, msg):
        fn = msg["fn"]
        if msg["is_observed"] or not is_per_point(msg) or not isinstance(fn, torch.distributions.OneHotCategorical):
            return
        msg["infer"] = {**msg["infer"], RELAXES: fn}
        relaxed = dist.RelaxedOneHotCategoricalStraightThrough if self.straight_through else dist.RelaxedOneHotCategorical
        msg["fn"] = relaxed(torch.tensor(self.temperature, device=fn.logits.device), logits=fn.logits)


class RelaxedELBO(ELBO):
    """The Gumbel-softmax estimator (module docstring): one relaxed draw per point and step, the
    temperature annealed by ``temperature`` (a :class:`Temperature`) over the calls of
    ``loss_and_grads`` (``step`` counts them)."""

    def __init__(self, straight_through=False, temperature=None):
        super().__init__(num_particles=1, max_plate_nesting=1)
        self.straight_through = straight_through
        self.schedule = Temperature(*(temperature or Temperature()))
        self.step = 0

    @property
    def temperature(self):
        return self.schedule.at(self.step)

    def state_dict(self):
        """What a checkpoint keeps: the step count, so that a resumed run's temperature goes on falling."""
        return {"step": torch.tensor(self.step)}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`."""
        self.step = int(state["step"])

    def _get_trace(self, model, guide, args, kwargs):
        """(model_trace, guide_trace), Pyro's hook: the guide under :class:`Relax` (each relaxed site
        holding its discrete q in ``infer[RELAXES]``), the model replayed at its relaxed values."""
        with Relax(self.temperature, self.straight_through):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        if not any(RELAXES in site["infer"] for site in per_point_sites(guide_trace)):
            raise ValueError("--elbo relaxed needs OneHotCategorical latent sites in the guide (--model categorical_mlp)")
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        return model_trace, guide_trace

    def surrogate(self, model, guide, args, kwargs):
        """The loss as a differentiable tensor (full-data scale). Each per-point site's term is masked and
        scaled as Pyro's ELBOs count it, less the data plate's N / B, put on once (``primitives``)."""
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        total = 0.0
        for site in per_point_sites(model_trace):
            guide_site = guide_trace.nodes.get(site["name"])
            if guide_site is not None and RELAXES in guide_site["infer"]:
                kl = torch.distributions.kl_divergence(guide_site["infer"][RELAXES], site["fn"])
                total = total - scale_and_mask(kl, site["scale"] / plates_scale(site), site["mask"])
            elif site["is_observed"]:
                total = total + point_log_prob(site)
            else:  # a continuous latent beside the discrete ones
                total = total + point_log_prob(site) - point_log_prob(guide_site)
        return -data_scale(model_trace) * total.sum()

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return self.surrogate(model, guide, args, kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.surrogate(model, guide, args, kwargs)
        loss.backward()
        self.step += 1
        return loss.item()
