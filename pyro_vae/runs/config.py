"""Every setting of a run, grouped by what reads it; ``config.json`` stores them.

``FitConfig`` holds what every run has (data, model, optimiser, device) and
two groups: ``mcmc`` (read only by ``--inference nuts``) and ``evaluation``
(the log-likelihood estimate written into ``summary.json``). Each field is
a flag of ``python -m pyro_vae.fit`` (``latent_dim`` is ``--latent-dim``; a
grouped setting is a flag of its own: ``--chains`` sets ``mcmc.chains``),
and what each means is said once, in that command's ``--help``
(``pyro_vae.fit.parser``): the docs quote it and tests/test_docs.py checks
the defaults they write. A field whose default is None means "decided by the
run": the dataset's model, binarization and sizes, the guide's local steps,
every point in one NUTS block, a run directory named after the run.
"""

from dataclasses import asdict, dataclass, field, fields

from pyro_vae.nn import ACTIVATIONS
from pyro_vae.plumbing.cli import UsageError, positive_int
from pyro_vae.data import BINARIZE_MODES
from pyro_vae.nn.flows import FLOWS
from pyro_vae.infer.mcmc import SAMPLERS
from pyro_vae.objectives import ELBOS, objective_problem, temperature_problem
from pyro_vae.objectives.relaxed import Temperature

INFERENCE = ("svi", "nuts", "em")
NUTS_MODES = ("fixed-decoder", "mcem")
DEVICES = "auto, cpu, cuda or cuda:N"


COMPILE_MODES = ("auto", "on", "off")
COVARIANCES = ("diag", "full")  # --covariance of a mixture model's components
LR_SCHEDULES = ("constant", "burda")


def learning_rate(config, epoch):
    """The learning rate of ``epoch`` (1, 2, ...): ``config.lr``, or under the
    "burda" schedule (Burda, Grosse & Salakhutdinov 2015, section 5)
    lr x 10^(-i/7) during the 3^i epochs of stage i = 0..7 (3,280 epochs in
    all; later epochs stay at stage 7)."""
    if config.lr_schedule == "constant":
        return config.lr
    stage, end = 0, 1
    while epoch > end and stage < 7:
        stage += 1
        end += 3**stage
    return config.lr * 10 ** (-stage / 7)


@dataclass
class MCMCSettings:
    """``--inference nuts``: which points, how many chains and draws."""

    mode: str = "fixed-decoder"
    decoder_from: str | None = None
    subset: int = 100
    chains: int = 4
    warmup: int = 1000  # 500 + 500 left R-hat above 1.01 on some of the digits' 200 coordinates
    samples: int = 1000
    em_iterations: int = 20
    m_steps: int = 20
    sampler: str = "nuts"
    block_size: int | None = None

    def validate(self):
        if self.mode not in NUTS_MODES:
            raise UsageError(f"nuts mode must be one of {', '.join(NUTS_MODES)}, got {self.mode!r}")
        if min(self.subset, self.chains, self.samples, self.em_iterations, self.m_steps) < 1 or self.warmup < 0:
            raise UsageError("--subset, --chains, --samples, --em-iterations and --m-steps must be positive, "
                             "--warmup non-negative")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.block_size is not None and not (1 <= self.block_size <= self.subset
                                                 and self.subset % self.block_size == 0):
            raise UsageError(f"--block-size must divide --subset ({self.subset}), got {self.block_size}")
        if self.mode == "mcem" and (self.sampler != "nuts" or self.block_size is not None):
            raise UsageError("--sampler and --block-size apply to --nuts-mode fixed-decoder")


@dataclass
class EvaluationSettings:
    """The importance-weighted log p(x) a run reports in ``summary.json``."""

    iwae_samples: int = 1000
    max_examples: int = 1000


@dataclass
class FitConfig:
    """Every setting of a run: what ``fit(FitConfig(...))`` and ``python -m pyro_vae.fit`` take.

    Fields are the flags of that command (``latent_dim`` is ``--latent-dim``; see its
    ``--help`` for each one's meaning and default); ``mcmc`` (:class:`MCMCSettings`) and
    ``evaluation`` (:class:`EvaluationSettings`) group the ``--inference nuts`` and
    ``summary.json`` settings. :meth:`validate` raises ``UsageError`` for values no run can
    use; :meth:`as_dict` / :meth:`from_dict` round-trip ``config.json``."""

    inference: str = "svi"
    model: str | None = None
    guide: str = "amortized"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    num_train: int | None = None
    num_test: int | None = None
    data_dim: int | None = None
    data_seed: int | None = None
    binarize: str | None = None
    latent_dim: int = 2
    hidden_dims: tuple = (400,)
    num_components: int | None = None
    covariance: str = "diag"
    categories: int | None = None
    activation: str = "softplus"
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"
    local_lr: float = 0.1
    local_steps: int | None = None
    flow: str | None = None
    flow_layers: int | None = None
    elbo: str = "trace"
    particles: int = 1
    baseline: str = "none"
    temperature: float = 1.0
    min_temperature: float = 0.5
    anneal_rate: float = 1e-4
    clip_norm: float | None = None
    bayesian_decoder: bool = False
    seed: int = 0
    device: str = "auto"
    compile: str = "auto"
    out: str | None = None
    imports: list = field(default_factory=list)
    mcmc: MCMCSettings = field(default_factory=MCMCSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)

    def validate(self):
        """Raise :class:`UsageError` for values no run can use."""
        checks = [
            (self.inference in INFERENCE, f"inference must be one of {', '.join(INFERENCE)}, got {self.inference!r}"),
            (self.latent_dim >= 1, f"latent dim must be at least 1, got {self.latent_dim}"),
            (self.num_components is None or self.num_components >= 1,
             f"--num-components must be at least 1, got {self.num_components}"),
            (self.categories is None or self.categories >= 2, f"--categories must be at least 2, got {self.categories}"),
            (self.covariance in COVARIANCES, f"covariance must be one of {', '.join(COVARIANCES)}, "
                                             f"got {self.covariance!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (0 < self.lr < float("inf"), f"learning rate must be positive, got {self.lr}"),
            (0 < self.local_lr < float("inf"), f"local learning rate must be positive, got {self.local_lr}"),
            (self.local_steps is None or self.local_steps >= 1,
             f"local steps must be a positive integer, got {self.local_steps}"),
            (self.flow is None or self.flow in FLOWS, f"--flow must be one of {', '.join(FLOWS)}, got {self.flow!r}"),
            (self.flow_layers is None or self.flow_layers >= 1,
             f"--flow-layers must be a positive integer, got {self.flow_layers}"),
            (all(h >= 1 for h in self.hidden_dims), f"hidden dims must be positive, got {self.hidden_dims}"),
            (self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}, "
                                             f"got {self.activation!r}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, "
                                               f"got {self.lr_schedule!r}"),
            (self.elbo in ELBOS, f"elbo must be one of {', '.join(ELBOS)}, got {self.elbo!r}"),
            (self.binarize in (None, *BINARIZE_MODES), f"binarize must be one of {', '.join(BINARIZE_MODES)}"),
            (self.compile in COMPILE_MODES, f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device must be {DEVICES}, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if temperature_problem(self.elbo, self.temperature_schedule()):
            raise UsageError(temperature_problem(self.elbo, self.temperature_schedule()))
        if self.elbo in ELBOS and objective_problem(self.elbo, self.particles, self.baseline):
            raise UsageError(objective_problem(self.elbo, self.particles, self.baseline))
        self.mcmc.validate()

    def temperature_schedule(self):
        """The relaxed objectives' annealing (``relaxed.Temperature``)."""
        return Temperature(self.temperature, self.min_temperature, self.anneal_rate)

    def compile_flag(self):
        """``compile`` as the samplers take it: True, False or "auto"."""
        return {"on": True, "off": False}.get(self.compile, self.compile)

    def as_dict(self):
        d = asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, saved):
        """The inverse of :meth:`as_dict`; unknown keys (a ``config.json``'s
        resolved device, sizes and versions) are ignored."""
        groups = {"mcmc": MCMCSettings, "evaluation": EvaluationSettings}
        values = {f.name: saved[f.name] for f in fields(cls) if f.name in saved and f.name not in groups}
        for name, group in groups.items():
            inner = saved.get(name) or {}
            values[name] = group(**{f.name: inner[f.name] for f in fields(group) if f.name in inner})
        config = cls(**values)
        config.hidden_dims = tuple(config.hidden_dims)
        return config

    @classmethod
    def from_flags(cls, flags):
        """From a flat mapping whose grouped keys read ``group.name``
        (the command line's destinations)."""
        top = {k: v for k, v in flags.items() if "." not in k}
        grouped = {}
        for key, value in flags.items():
            if "." in key:
                group, name = key.split(".", 1)
                grouped.setdefault(group, {})[name] = value
        return cls.from_dict({**top, **grouped})


def add_mixture_arguments(p, d=None):
    """The flags of a mixture model (``gmm``) and of ``categorical_mlp`` on the parser ``p`` (defaults
    from the :class:`FitConfig` ``d``), passed to the models that declare them (``assembly.model_options``)."""
    d = d or FitConfig()
    p.add_argument("--num-components", type=int, metavar="K",
                   help="mixture components of --model gmm (default 3)")
    p.add_argument("--covariance", choices=COVARIANCES, default=d.covariance,
                   help="--model gmm's component covariances: diag or full (default %(default)s)")
    p.add_argument("--categories", type=positive_int, metavar="K",
                   help="classes of each of the --latent-dim one-hot latents of --model categorical_mlp (default 10)")
