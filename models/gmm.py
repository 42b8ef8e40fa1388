import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.infer.em import register_closed_form
from pyro_vae.nn import data_plate
from pyro_vae.plumbing.registry import register_model

from .base import LatentVariableModel

COVARIANCES = ("diag", "full")
MIN_SCALE = 1e-3  # the smallest standard deviation (or Cholesky diagonal) a component may take
REGULARIZATION = 1e-6  # eps of the M-step's covariances (scikit-learn's reg_covar)


@register_model("gmm")
class GaussianMixture(LatentVariableModel):
    """A mixture of K Gaussians (Bishop 2006, 9.2):

        z_i ~ Categorical(pi),   x_i | z_i = k ~ N(mu_k, Sigma_k),

    Sigma_k diagonal (``covariance="diag"``) or full (``"full"``, through its Cholesky factor). The
    assignment ``"z"`` is a discrete site in the data plate marked for parallel enumeration, so
    ``TraceEnum_ELBO`` and ``pyro_vae.program.density`` sum it out exactly; the weights, means and covariances
    are the model's parameters (point estimates). The exact marginal and posterior are closed-form:

    - ``log_marginal``: log p(x) = log sum_k pi_k N(x; mu_k, Sigma_k)
    - ``exact_posterior``: p(z = k | x) = pi_k N(x; mu_k, Sigma_k) / p(x), the responsibilities.

    Its closed-form EM iteration (:func:`em_update`, below) is registered with ``pyro_vae.infer.em``.
    ``latent_dim`` and ``hidden_dims`` are accepted for a uniform constructor and ignored;
    ``num_components`` (``--num-components``) and ``covariance`` (``--covariance``) size it.
    """

    binary_data = False

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(), num_components=3, covariance="diag"):
        super().__init__(data_dim, latent_dim, ())
        if num_components < 1:
            raise ValueError(f"num_components must be at least 1, got {num_components}")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
        self.num_components, self.covariance = num_components, covariance
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, data_dim))
        # log of the standard deviations (diag) or of the Cholesky factor's diagonal (full)
        self.log_scales = nn.Parameter(torch.zeros(num_components, data_dim))
        if covariance == "full":  # the strictly lower triangle of each Cholesky factor
            self.tril = nn.Parameter(torch.zeros(num_components, data_dim, data_dim))

    @property
    def weights(self):
        return torch.softmax(self.logits, -1)

    def scale_tril(self):
        """The Cholesky factors L_k of Sigma_k = L_k L_k^T, (K, D, D)."""
        diag = torch.diag_embed(self.log_scales.exp() + MIN_SCALE)
        if self.covariance == "diag":
            return diag
        return diag + torch.tril(self.tril, diagonal=-1)

    def covariances(self):
        tril = self.scale_tril()
        return tril @ tril.transpose(-1, -2)

    def components(self, z=None):
        """N(mu_k, Sigma_k): all K (batch (K,)) or those of the assignments ``z`` (batch z.shape)."""
        locs, log_scales = self.locs, self.log_scales
        if z is not None:
            locs, log_scales = locs[z], log_scales[z]
        if self.covariance == "diag":
            return dist.Normal(locs, log_scales.exp() + MIN_SCALE).to_event(1)
        tril = self.scale_tril() if z is None else self.scale_tril()[z]
        return dist.MultivariateNormal(locs, scale_tril=tril)

    def likelihood(self, z):
        return self.components(z)

    def forward(self, x, idx=None, num_data=None):
        """The Pyro model: z_i ~ Categorical(pi), x_i ~ N(mu_{z_i}, Sigma_{z_i})."""
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data):
            z = pyro.sample("z", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"})
            pyro.sample("x", self.likelihood(z), obs=x)

    def joint_per_component(self, x):
        """log pi_k + log N(x_i; mu_k, Sigma_k), shape (N, K)."""
        return torch.log_softmax(self.logits, -1) + self.components().log_prob(x.unsqueeze(-2))

    def log_marginal(self, x):
        """Exact log p(x) per row of ``x`` (nats)."""
        return self.joint_per_component(x).logsumexp(-1)

    def exact_posterior(self, x):
        """p(z | x): the responsibilities, a Categorical per row of ``x``."""
        return dist.Categorical(logits=torch.log_softmax(self.joint_per_component(x), -1))

    @torch.no_grad()
    def initialize_from(self, x, seed=0):
        """k-means++ seeding (Arthur & Vassilvitskii 2007) of the means from the rows ``x``, every
        component the data's per-coordinate spread, equal weights: where every fitting method starts,
        so that they climb the same hill. Seeded by ``seed`` only (the global RNG is untouched)."""
        generator = torch.Generator().manual_seed(seed)
        x = x.detach().float().cpu()
        centres = [x[torch.randint(len(x), (1,), generator=generator)].squeeze(0)]
        for _ in range(1, self.num_components):
            d2 = torch.cdist(x, torch.stack(centres)).min(-1).values ** 2
            weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
            centres.append(x[torch.multinomial(weights, 1, generator=generator)].squeeze(0))
        spread = x.std(0, correction=0).clamp(min=10 * MIN_SCALE) if len(x) > 1 else torch.ones(x.shape[1])
        self.locs.copy_(torch.stack(centres))
        self.log_scales.copy_((spread - MIN_SCALE).log().expand_as(self.log_scales))
        self.logits.zero_()
        if self.covariance == "full":
            self.tril.zero_()

    @torch.no_grad()
    def set_parameters(self, weights, locs, covariances):
        """Write pi, mu and Sigma (diagonal: (K, D) variances; full: (K, D, D) matrices) into the
        parameters (the M-step of closed-form EM)."""
        self.logits.copy_(weights.clamp(min=1e-30).log())
        self.locs.copy_(locs)
        if self.covariance == "diag":
            self.log_scales.copy_((covariances.sqrt() - MIN_SCALE).clamp(min=1e-30).log())
            return
        tril = torch.linalg.cholesky(covariances)
        diag = torch.diagonal(tril, dim1=-2, dim2=-1)
        self.log_scales.copy_((diag - MIN_SCALE).clamp(min=1e-30).log())
        self.tril.copy_(torch.tril(tril, diagonal=-1))

    def num_parameters(self):
        """Free parameters: K - 1 weights, K D means, K D or K D (D + 1) / 2 covariance entries."""
        d = self.data_dim
        per_cov = d if self.covariance == "diag" else d * (d + 1) // 2
        return self.num_components - 1 + self.num_components * (d + per_cov)


@register_closed_form(GaussianMixture)
@torch.no_grad()
def em_update(model, x):
    """One EM iteration of the mixture on the rows ``x`` (Bishop 2006, 9.2), the parameters written
    into ``model``; returns the mean log p(x) per point under the parameters before it. E-step: the
    responsibilities r_ik = p(z_i = k | x_i), N_k = sum_i r_ik. M-step:

        pi_k = N_k / N,   mu_k = sum_i r_ik x_i / N_k,
        Sigma_k = sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T / N_k + eps I   (diagonal: its diagonal),

    eps = ``REGULARIZATION`` keeping a component that collapses onto one point finite. The sums run
    in float64."""
    joint = model.joint_per_component(x).double()  # log pi_k + log N(x_i; mu_k, Sigma_k), (N, K)
    log_px = joint.logsumexp(-1)
    r = torch.softmax(joint, -1)
    x = x.double()
    counts = r.sum(0) + 10 * torch.finfo(torch.float64).tiny
    locs = (r.T @ x) / counts[:, None]
    if model.covariance == "diag":
        covariances = (r.T @ x**2) / counts[:, None] - locs**2
        covariances = covariances.clamp(min=0) + REGULARIZATION
    else:
        diff = x.unsqueeze(0) - locs.unsqueeze(1)  # (K, N, D)
        covariances = torch.einsum("nk,kni,knj->kij", r, diff, diff) / counts[:, None, None]
        covariances = covariances + REGULARIZATION * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    model.set_parameters(counts / len(x), locs, covariances)
    return float(log_px.mean())
