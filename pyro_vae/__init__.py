"""pyro_vae: deep latent-variable models p(z) p(x | z) as Pyro model/guide pairs, and the ways to
infer them compared on the same model: SVI with a variational family (an amortized encoder
q(z | x), i.e. a VAE; per-point mean-field Gaussians, i.e. classical variational Bayes;
full-rank, flow, semi-amortized and discrete families) under several objectives (ELBO,
importance-weighted bounds, wake-sleep, score-function, relaxed), NUTS and ChEES-HMC on the
latents, Monte Carlo EM and closed-form EM; scored by importance sampling, AIS and BDMC.

The Python API, ``import pyro_vae as pv``:

- ``pv.fit(pv.FitConfig(...))`` fits a model and writes a run directory (a ``FitResult``);
  ``pv.resume(run_dir)`` continues a stopped SVI run; ``pv.load_run(run_dir)`` reads one back.
  ``FitConfig``'s groups: ``pv.MCMCSettings``, ``pv.EvaluationSettings``;
- ``pv.evaluate(run, pv.EvaluateSettings(...))`` scores a run (an ``Evaluation``, ``eval.json``);
- ``pv.compare(run, pv.CompareSettings(...))`` compares inference methods on its model (a
  ``Comparison``, ``report.md`` and ``report.json``);
- ``pv.calibrate(run, method, pv.CalibrationSettings(...))``: simulation-based calibration of one
  inference method's posterior on the model's own simulations (a ``CalibrationResult``; also
  ``calibrate=`` of ``EvaluateSettings`` and ``CompareSettings``, docs/calibration.md);
- a model, guide or dataset of one's own: ``pv.LatentVariableModel``, ``pv.data_plate``,
  ``pv.mlp``, ``pv.RawDataset``, ``pv.load_digits``, ``pv.load_dataset`` and the decorators
  ``pv.register_model``, ``pv.register_guide``, ``pv.register_dataset`` (see docs/extending.md).

The commands do the same from a shell, each parsing its flags, calling the function above and
printing: ``python -m pyro_vae.fit``, ``python -m pyro_vae.evaluate``, ``python -m
pyro_vae.compare`` (``--help`` on each; docs/fit.md, docs/evaluation.md, docs/compare.md).
"""

import sys
import types

from pyro_vae.data import RawDataset, load_dataset, load_digits, register_dataset
from pyro_vae.models import LatentVariableModel
from pyro_vae.nn import data_plate, mlp
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.plumbing.registry import register_guide, register_model
from pyro_vae.runs import fit, resume
from pyro_vae.runs.config import EvaluationSettings, FitConfig, MCMCSettings
from pyro_vae.runs.rundir import FitResult, load_run
from pyro_vae.studies.calibration import CalibrationSettings, calibrate
from pyro_vae.studies.comparison import CompareSettings, Comparison, compare
from pyro_vae.studies.evaluation import EvaluateSettings, Evaluation, evaluate
from pyro_vae.studies.rank_statistics import CalibrationResult

__version__ = "0.1.0"

__all__ = ["fit", "resume", "load_run", "evaluate", "compare", "FitConfig", "MCMCSettings", "EvaluationSettings",
           "EvaluateSettings", "CompareSettings", "FitResult", "Evaluation", "Comparison", "register_model",
           "register_guide", "register_dataset", "LatentVariableModel", "data_plate", "mlp", "RawDataset",
           "load_dataset", "load_digits", "UsageError", "calibrate", "CalibrationSettings", "CalibrationResult"]


class _Package(types.ModuleType):
    """The commands ``pyro_vae.fit``, ``.evaluate`` and ``.compare`` share their names with API
    functions. Importing a submodule makes Python set it as an attribute of the package, which
    would replace ``pv.fit`` the function by the command's module the moment anything ran
    ``import pyro_vae.fit``. The API names are kept: the commands stay reachable as modules
    (``from pyro_vae.fit import main``, ``sys.modules["pyro_vae.fit"]``)."""

    def __setattr__(self, name, value):
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
