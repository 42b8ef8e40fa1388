"""A run: settings in, a run directory out.

- ``config``: every setting of a run (``FitConfig`` and its groups);
- ``assembly``: the device, the data, the model and the guide a run's settings name, and the checks
  that refuse a pair before any training;
- ``rundir``: what a run directory holds, ``finish_run`` (the one ending of every driver: metrics,
  checkpoint, summary, then figures) and ``load_run``;
- ``run_figures``: what a fitted run's figures show, computed before the summary, drawn after it (a
  figure that does not fit the model is skipped with a note);
- ``figures``: drawing the figures a run and a comparison make;
- ``fit_svi``, ``fit_nuts``, ``fit_em``: one driver per inference;
- here: :func:`fit` picks the driver, :func:`resume` continues a stopped SVI run.
"""

# the driver modules, by their module names: importing their functions here would shadow the modules
# (``pyro_vae.runs.fit_svi`` would read as the function, and ``mock.patch`` of the module would miss)
from pyro_vae.runs import fit_em, fit_nuts, fit_svi
from pyro_vae.runs.config import FitConfig

DEPRECATED_GUIDES = {"nuts": "nuts"}  # guide NAME that was an inference method -> inference NAME


def fit(config, progress=True, log=print, should_stop=None):
    """Fit ``config.model`` by ``config.inference`` and write the run directory ``config.out``.

    Inputs: ``config``, a :class:`FitConfig` (validated here: a bad value raises
    ``UsageError``); ``progress`` (tqdm bars), ``log`` (a print-like callable for
    the run's lines), ``should_stop`` (polled after every SVI step: a signal
    handler's flag).

    SVI (``fit_svi``) maximises the ELBO
    L(theta, phi) = sum_i E_q(z_i | x_i)[log p_theta(x_i, z_i) - log q_phi(z_i | x_i)]
    of ``config.guide`` by minibatch steps on the full-data scale; NUTS
    (``fit_nuts``) draws z_1..z_N | x_1..x_N under a fixed decoder (or
    Monte Carlo EM); EM (``fit_em``) iterates closed-form E and M steps. Returns a
    ``FitResult``: model, guide (or the MCMC run's moment-matched posterior), data,
    config, per-epoch metrics, the summary and the run directory."""
    if config.guide in DEPRECATED_GUIDES:
        log(f"note: --guide {config.guide} is deprecated; use --inference {DEPRECATED_GUIDES[config.guide]}")
        config.inference, config.guide = DEPRECATED_GUIDES[config.guide], FitConfig.guide
    config.validate()
    if config.inference == "nuts":
        return fit_nuts.fit_nuts(config, progress, log)
    if config.inference == "em":
        return fit_em.fit_em(config, progress, log)
    return fit_svi.fit_svi(config, progress, log, should_stop)


def resume(run_dir, epochs=None, progress=True, log=print, should_stop=None):
    """Continue the SVI run in ``run_dir`` from its last checkpoint with its saved settings, on CPU
    to the same result as a run never stopped; ``epochs`` extends it (``fit_svi.resume_svi``)."""
    return fit_svi.resume_svi(run_dir, epochs, progress, log, should_stop)
