"""Assembling a run from its settings: the device, the data, the model and the guide."""

import inspect

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from pyro_vae.nn import hidden_activation
from pyro_vae.plumbing.cli import UsageError, doing, import_user_modules
from pyro_vae.data import load_dataset
from pyro_vae.program.density import DATA_PLATE, latent_layout, observation, plug_in_values, prior_draws
from pyro_vae.guides.decoder_posterior import DecoderPosterior, WithDecoderPosterior
from pyro_vae.objectives import guide_problem, model_problem
from pyro_vae.plumbing.registry import get_guide, get_model, model_names


def resolve_device(name):
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N`` as a
    ``torch.device``; :class:`UsageError` for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N, ...)") from None


def load_data(config, device):
    """The dataset named in ``config`` on ``device``."""
    options = {k: v for k, v in (("data_dim", config.data_dim), ("seed", config.data_seed)) if v is not None}
    with doing(f"loading dataset {config.dataset}"):
        return load_dataset(config.dataset, config.data_dir, config.binarize, device, download=config.download,
                            num_train=config.num_train, num_test=config.num_test, **options)


def build_model(config, data):
    """The model named in ``config`` (or the dataset's default), sized for ``data``."""
    import_user_modules(config.imports)
    try:
        model_cls = get_model(config.model or data.default_model)
    except KeyError as error:
        raise UsageError(error.args[0]) from None
    if getattr(model_cls, "binary_data", False) and not data.is_binary():
        raise UsageError(
            f"model {model_cls.name} has a Bernoulli likelihood but {data.name} with --binarize "
            f"{data.binarize} is not binary: use --binarize dynamic or static, or a Gaussian model"
        )
    sizes = f"data dim {data.data_dim}, latent dim {config.latent_dim}, hidden dims {list(config.hidden_dims)}"
    with doing(f"building model {model_cls.name} ({sizes})"), hidden_activation(config.activation):
        model = model_cls(data.data_dim, config.latent_dim, config.hidden_dims, **model_options(model_cls, config))
        if hasattr(model, "initialize_from"):  # a data-dependent start (the mixture's k-means++ means)
            model.initialize_from(data.train_x, config.seed)
        model = model.to(data.device)
    try:
        latent_layout(model, data.test_x[:2])
    except ValueError as error:
        raise UsageError(f"model {model.name}: {error}") from None
    if config.bayesian_decoder:
        if not isinstance(getattr(model, "decoder", None), torch.nn.Module):
            raise UsageError(f"--bayesian-decoder needs a model with a decoder network; {model.name} has none")
        model.bayesian_decoder = True
        check_decoder_is_sampled(model, data.test_x[:4])
    return model


def model_options(model_cls, config):
    """The settings a model declares beyond the uniform three (``--num-components``, ``--covariance``:
    keyword arguments of its constructor), from ``config``; UsageError for one set but not declared."""
    accepted = inspect.signature(model_cls.__init__).parameters
    options = {}
    for name, value, default in (("num_components", config.num_components, None),
                                 ("categories", config.categories, None),
                                 ("covariance", config.covariance, "diag")):
        if name in accepted and value is not None:
            options[name] = value
        elif value != default:
            flag = "--" + name.replace("_", "-")
            takers = [m for m in model_names() if name in inspect.signature(get_model(m).__init__).parameters]
            raise UsageError(f"{flag}: model {model_cls.name} has no {name.replace('_', ' ')} "
                             f"(models that have: {', '.join(takers)})")
    return options


def guide_options(guide_cls, config):
    """``--flow`` and ``--flow-layers`` for a flow guide (keyword arguments of its constructor);
    UsageError for either given with a guide that is not a flow."""
    if getattr(guide_cls, "family", None) == "flow":
        return {k: v for k, v in (("flow", config.flow), ("flow_layers", config.flow_layers)) if v is not None}
    given = [flag for flag, value in (("--flow", config.flow), ("--flow-layers", config.flow_layers)) if value is not None]
    if given:
        raise UsageError(f"{' and '.join(given)}: guide {guide_cls.name} is not a flow (use --guide flow)")
    return {}


def build(config, data):
    """The model and the guide named in ``config``, sized for ``data``.
    With ``--bayesian-decoder`` the guide is q(theta) q(z | x)."""
    model = build_model(config, data)
    try:
        guide_cls = get_guide(config.guide)
    except KeyError as error:
        raise UsageError(error.args[0]) from None
    if config.local_steps is not None and not hasattr(guide_cls, "local_steps"):
        raise UsageError(f"--local-steps: guide {guide_cls.name} has no local parameters to refine "
                         f"(meanfield and semi_amortized have)")
    if guide_problem(config.elbo, guide_cls, config.bayesian_decoder):
        raise UsageError(guide_problem(config.elbo, guide_cls, config.bayesian_decoder))
    if model_problem(config.elbo, model):
        raise UsageError(model_problem(config.elbo, model))
    with doing(f"building guide {guide_cls.name} for {data.num_train} training points"), \
            hidden_activation(config.activation):
        try:
            guide = guide_cls(model, data.num_train, config.hidden_dims, **guide_options(guide_cls, config))
        except ValueError as error:  # a guide written for another model (two_layer's, categorical_mlp's)
            raise UsageError(f"guide {guide_cls.name} cannot be built for model {model.name}: {error}") from None
        guide = guide.to(data.device)
        if hasattr(guide, "local_steps"):
            guide.local_lr = config.local_lr
            guide.local_steps = config.local_steps or guide.local_steps
        if config.bayesian_decoder:
            guide = WithDecoderPosterior(guide, DecoderPosterior(model).to(data.device))
    layout = check_guide_samples_every_latent(model, guide, data)
    check_latents_are_per_point(model, guide, data)
    guide.posterior_is_partial = posterior_is_partial(model, guide, layout, data.test_x[:2])
    return model, guide


@torch.no_grad()
def posterior_is_partial(model, guide, layout, x):
    """Whether ``guide.posterior(x)`` covers only part of a model with several latent sites: it returns
    one torch distribution, which is over one site. Every estimator then scores the guide's whole
    program instead, as it does a guide without ``posterior`` (``posteriors.guide_posterior``), so the
    shortcut is never a trap. Asked of multi-site models only, in eval mode, the RNG left as it was."""
    sampled = len(layout.continuous) + (len(layout.discrete) if getattr(model, "sampled_discrete", False) else 0)
    if not hasattr(guide, "posterior") or sampled < 2:
        return False
    was_training = guide.training
    guide.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with pyro.validation_enabled(False), torch.random.fork_rng(devices=devices):
            q = guide.posterior(x, fixed=plug_in_values(model, guide))
    finally:
        guide.train(was_training)
    return isinstance(q, torch.distributions.Distribution)


@torch.no_grad()
def check_latents_are_per_point(model, guide, data):
    """Every latent of the model is per point (in the data plate) or a global value the evaluations fix
    (a Bayesian decoder's weights, ``density.plug_in_values``): a global latent outside the plate would
    otherwise be drawn from its prior at every step by Trace_ELBO, silently, and fixed by no method.
    A one-line UsageError naming it, before any training. The model runs once on two rows, the RNG left
    as it was."""
    x = data.test_x[:2]
    devices = [x.device] if x.device.type == "cuda" else []
    with pyro.validation_enabled(False), torch.random.fork_rng(devices=devices):
        trace = poutine.trace(poutine.block(model, hide_types=["param"])).get_trace(
            x, torch.arange(len(x), device=x.device), data.num_train)
    fixed = plug_in_values(model, guide)
    outside = [name for name, site in trace.nodes.items() if site["type"] == "sample" and not site["is_observed"]
               and not site_is_subsample(site) and name not in fixed
               and not any(f.name == DATA_PLATE for f in site["cond_indep_stack"])]
    if outside:
        raise UsageError(f"model {model.name} has the latent site(s) {', '.join(outside)} outside the data plate "
                         f"\"{DATA_PLATE}\": every method here infers per-point latents, so a global latent needs "
                         f"to be a parameter (pyro.param) or the decoder's weights under --bayesian-decoder")


@torch.no_grad()
def check_guide_samples_every_latent(model, guide, data):
    """Every continuous latent site of the model is sampled by the guide (Trace_ELBO would otherwise
    draw it from the prior, silently, and no estimator could score it): a one-line UsageError naming
    the sites otherwise. The guide runs once, in eval mode, on two test rows, the RNG left as it was.
    Returns the model's latent layout (``density.latent_layout``)."""
    x = data.test_x[:2]
    idx = torch.arange(len(x), device=x.device)
    layout = latent_layout(model, x)
    wanted = {*layout.names, *(layout.discrete if getattr(model, "sampled_discrete", False) else ())}
    was_training = guide.training
    guide.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with pyro.validation_enabled(False), torch.random.fork_rng(devices=devices):
            trace = poutine.trace(poutine.block(guide, hide_types=["param"])).get_trace(x, idx, data.num_train)
    except ValueError as error:  # a guide built for another program (a one-site refinement on two sites)
        reason = str(error).split("Trace Shapes:")[0].strip()  # Pyro appends the trace's shapes
        raise UsageError(f"guide {guide.name} cannot run with model {model.name}: {reason}") from None
    finally:
        guide.train(was_training)
    continuous = [name for name, site in trace.nodes.items()
                  if site["type"] == "sample" and name in layout.discrete and not site["fn"].support.is_discrete]
    if continuous:
        raise UsageError(f"guide {guide.name} draws continuous values for the discrete latent site(s) "
                         f"{', '.join(continuous)} of model {model.name}: use a guide with discrete sites")
    missing = wanted - {name for name, site in trace.nodes.items() if site["type"] == "sample"}
    if missing:
        raise UsageError(f"guide {guide.name} samples no value for the model's latent site(s) "
                         f"{', '.join(sorted(missing))} of model {model.name}: it must sample every latent site "
                         f"({', '.join(sorted(wanted))})")
    return layout


@torch.no_grad()
def check_decoder_is_sampled(model, x):
    """A Bayesian decoder's weights are the program's ``decoder.<name>``
    sites, which reach the network only through ``self.decode(z)``. A model
    that calls ``self.decoder(z)`` would silently use its unused point
    weights instead: run the program at two different weight values and
    refuse a likelihood that does not change."""
    z = {name: torch.zeros_like(value) for name, value in prior_draws(model, x).items()}
    weights = dict(model.decoder.named_parameters())
    means = [observation(model, x, z, {f"decoder.{name}": value * scale + shift for name, value in weights.items()}).mean
             for scale, shift in ((1.0, 0.0), (-0.5, 0.3))]
    if torch.equal(*means):
        raise UsageError(f"--bayesian-decoder: model {model.name} calls its decoder network directly; "
                         f"its likelihood must call self.decode(z) for the sampled weights to be used")
