"""The score-function (REINFORCE) estimator of the ELBO's gradient, ``--elbo score-function``.

Under ``primitives.NonReparam`` every unobserved per-point site (in the plate
"data") draws its value with ``sample()`` instead of ``rsample()``
(``fn.has_rsample_(False)``), so no gradient flows through z and Pyro's
``TraceGraph_ELBO`` builds the score-function surrogate for those sites,
optionally with a baseline.
"""

import pyro
import torch
from pyro.infer import TraceGraph_ELBO

from pyro_vae.nn import mlp
from pyro_vae.objectives.primitives import NonReparam, per_point_sites, point_log_prob

BASELINES = ("none", "average", "learned")
BASELINE_MODULE = "score_function_baseline"  # the learned baseline's name in the param store


def baseline_network(data_dim):
    """f of the learned baseline: data_dim -> 64 -> 1."""
    return mlp([data_dim, 64, 1])


class ScoreFunctionELBO(TraceGraph_ELBO):
    """The ELBO of ``Trace_ELBO``, its guide gradient by the score function (Williams 1992;
    Ranganath, Gerrish & Blei 2014): sum_i (log p(x_i, z_i) - log q(z_i | x_i) - b_i) grad log q(z_i | x_i),
    z_i ~ q detached, on the full-data scale; the model's gradient is grad log p(x, z) at those z.

    Pyro's ``TraceGraph_ELBO`` does the estimator (downstream costs per site, the surrogate); this
    class switches off the reparameterisation of the guide's per-point sites (:class:`NonReparam`) and
    sets each site's baseline b_i (``infer={"baseline": ...}``):

    - ``none``: b = 0;
    - ``average``: b_i = (N/B) a, a a decaying average (``beta``) of the per-point ELBO
      log p(x_i, z_i) - log q(z_i | x_i) over past minibatches, passed as ``baseline_value``. Not
      Pyro's ``use_decaying_avg_baseline``: that one keeps one average per *position* in the
      minibatch, shaped like the first minibatch, and fails on the epoch's last, smaller one;
    - ``learned``: b_i = (N/B) (a + f(x_i)), f an MLP (``nn_baseline``, input x_i) trained by Pyro
      on (cost - b)^2; it is registered with ``pyro.module`` under ``BASELINE_MODULE`` in the
      guide's program, so SVI's optimiser trains it. It is not part of the guide's state dict:
      :meth:`state_dict` holds it and the average, and a run's checkpoint keeps that.

    One baseline serves every per-point site of a guide with several (the unbiased estimator
    only needs b_i not to depend on z_i). One particle per step (``num_particles`` > 1 runs
    Pyro's sequential particles: no vectorised plate would see the flag).
    """

    def __init__(self, baseline="none", num_particles=1, beta=0.9):
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=1)
        self.baseline, self.beta = baseline, beta
        self.average = None  # decaying average of the per-point ELBO (a tensor on the data's device)
        self.network = None  # the learned baseline f, built on the first minibatch
        self.restored = False  # loaded from a checkpoint, not yet moved to the data's device

    def state_dict(self):
        """What a checkpoint keeps of the baselines (tensors only): the running average and the
        learned network's weights, so that a resumed run goes on from them."""
        state = {} if self.average is None else {"average": self.average}
        if self.network is not None:
            state["network"] = self.network.state_dict()
        return state

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`; the tensors move to the data's device at the next step. The
        network is built here, before a resumed run restores the RNG state (``fit_svi.resume_svi``),
        so that its initial draws do not shift the run's random stream."""
        self.average = state.get("average")
        weights = state.get("network")
        if weights is not None:
            self.network = baseline_network(weights["0.weight"].shape[-1])
            self.network.load_state_dict(weights)
        self.restored = True

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, self.wrap(guide), args, kwargs)
        self.update_average(model_trace, guide_trace)
        return model_trace, guide_trace

    def wrap(self, guide):
        def guide_with_baselines(x, *args, **kwargs):
            if self.restored:  # a checkpoint's tensors, loaded on the CPU
                self.average = None if self.average is None else self.average.to(x.device)
                self.network = None if self.network is None else self.network.to(x.device)
                self.restored = False
            options = None
            if self.baseline == "learned":
                if self.network is None:
                    self.network = baseline_network(x.shape[-1]).to(x.device)
                pyro.module(BASELINE_MODULE, self.network)
                options = lambda msg: {"nn_baseline": lambda inputs: self.learned(msg, inputs),  # noqa: E731
                                       "nn_baseline_input": x}
            elif self.baseline == "average":
                average = torch.as_tensor(0.0 if self.average is None else self.average, device=x.device)
                options = lambda msg: {"baseline_value": (msg["scale"] * average).expand(msg["fn"].batch_shape)}  # noqa: E731
            with NonReparam(options):
                return guide(x, *args, **kwargs)

        return guide_with_baselines

    def learned(self, msg, inputs):
        average = 0.0 if self.average is None else self.average
        return msg["scale"] * (average + self.network(inputs).squeeze(-1))

    @torch.no_grad()
    def update_average(self, model_trace, guide_trace):
        if self.baseline == "none":
            return
        total = 0.0
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for site in per_point_sites(trace):
                total = total + sign * point_log_prob(site)
        mean = total.mean()
        self.average = mean if self.average is None else self.beta * self.average + (1 - self.beta) * mean
