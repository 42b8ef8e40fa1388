"""Users' programs through every command (issue #36).

Each module of ``tests/zoo/`` is a user's file written from docs/extending.md. It is copied into a folder
outside the repository, named with ``--import``, and run through ``fit``, ``evaluate`` (IWAE and AIS),
``fit --inference nuts``, ``compare --run`` and ``fit --resume``, each ending in a complete run directory.
Where the model has a closed-form log p(x) the estimates are checked against it; elsewhere the bounds are
checked for their order: ELBO <= IWAE, and AIS >= IWAE less three standard errors.
"""

import json
import math
import shutil
from pathlib import Path

import arviz as az
import pytest

from conftest import run_command as run

ZOO = Path(__file__).parent / "zoo"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt")

# (module, model, guide, dataset, extra fit flags): every zoo program, with the guide its user wrote or
# the library's amortized guide where the model's one site is a vector
CASES = {
    "scalar latent, Gaussian likelihood, closed form": ("zoo_scalar", "zoo_scalar", "zoo_scalar_encoder",
                                                        "linear_gaussian", ()),
    "matrix latent": ("zoo_matrix", "zoo_matrix", "zoo_matrix_encoder", "digits", ()),
    "positive, unit and simplex latents": ("zoo_constrained", "zoo_constrained", "zoo_constrained_encoder",
                                           "linear_gaussian", ()),
    "two sites, no posterior, closed form": ("zoo_sites", "zoo_sites", "zoo_sites_program", "linear_gaussian", ()),
    "two sites, a posterior for one": ("zoo_sites", "zoo_sites", "zoo_sites_partial", "linear_gaussian", ()),
    "an enumerated site beside a continuous one": ("zoo_enum", "zoo_enum", "amortized", "digits",
                                                   ("--elbo", "enum")),
    "rows masked by poutine.mask": ("zoo_masked", "zoo_masked_rows", "amortized", "digits", ()),
    "pixels masked by the distribution": ("zoo_masked", "zoo_masked_pixels", "amortized", "digits", ()),
    "a plain nn.Module": ("zoo_plain", "zoo_plain", "amortized", "digits", ()),
}

# the coordinates SBC ranks, per module: sites in the program's order, a constrained site by its
# unconstrained coordinates (the simplex w of 3 weights has 2)
COORDINATES = {
    "zoo_scalar": ["z"],
    "zoo_matrix": ["z[0]", "z[1]", "z[2]", "z[3]"],
    "zoo_constrained": ["s", "u", "w[0]", "w[1]", "z[0]", "z[1]"],
    "zoo_sites": ["z1", "z2[0]"],
    "zoo_enum": ["z[0]", "z[1]"],
    "zoo_masked": ["z[0]", "z[1]"],
    "zoo_plain": ["z[0]", "z[1]"],
}


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The zoo's modules copied into a folder outside the repository, importable by name."""
    folder = tmp_path / "user"
    folder.mkdir()
    for path in ZOO.glob("zoo_*.py"):
        shutil.copy(path, folder / path.name)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.chdir(folder)
    return folder


def fit_case(module, model, guide, dataset, extra, out, capsys):
    return run("fit", "--import", module, "--model", model, "--guide", guide, "--dataset", dataset, "--epochs", 1,
               "--num-train", 120, "--batch-size", 40, "--hidden-dims", 16, "--no-progress", "--eval-iwae-samples",
               20, "--eval-max-examples", 20, "--out", out, *extra, capsys=capsys)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_users_program_runs_through_every_command(case, user_folder, capsys):
    module, model, guide, dataset, extra = CASES[case]
    status, err = fit_case(module, model, guide, dataset, extra, "run", capsys)
    assert status == 0, err
    run_dir = user_folder / "run"
    assert all((run_dir / name).exists() for name in RUN_FILES), sorted(p.name for p in run_dir.iterdir())

    status, err = run("evaluate", "run", "--iwae-samples", 200, "--max-examples", 12, "--estimator", "ais",
                      "--ais-steps", 100, "--ais-chains", 4, "--ais-start", "q", "--no-progress", capsys=capsys)
    assert status == 0, err
    results = json.loads((run_dir / "eval.json").read_text())
    assert results["elbo"] <= results["log_likelihood"] + 3 * results["elbo_se"]
    assert results["ais"]["log_likelihood"] >= results["log_likelihood"] - 3 * results["log_likelihood_se"] - 0.05
    if "exact_log_likelihood" in results:  # the closed form: IWAE below it, AIS close to it
        exact = results["exact_log_likelihood"]
        assert results["log_likelihood"] <= exact + 3 * results["log_likelihood_se"] + 0.01
        assert abs(results["ais"]["log_likelihood"] - exact) < 0.5 + 0.01 * abs(exact)

    # SBC on the program's own simulations: every continuous coordinate of every site ranked (constrained
    # ones in the layout's unconstrained space), an enumerated site drawn and left out with a note
    status, err = run("evaluate", "run", "--iwae-samples", 10, "--max-examples", 4, "--calibrate", "amortized,meanfield",
                      "--sbc-simulations", 40, "--sbc-draws", 39, "--no-progress", capsys=capsys)
    assert status == 0, err
    calibrated = json.loads((run_dir / "calibration.json").read_text())["methods"]
    assert [m["method"] for m in calibrated] == ["amortized", "meanfield"]
    for method in calibrated:
        assert method["coordinates"] == COORDINATES[module] and 0 <= method["p_value"] <= 1
        assert any("discrete sites y" in note for note in method["notes"]) == (module == "zoo_enum")

    status, err = run("fit", "--inference", "nuts", "--decoder-from", "run", "--subset", 3, "--chains", 2,
                      "--warmup", 40, "--samples", 40, "--compile", "off", "--no-progress", "--out", "nuts",
                      capsys=capsys)
    assert status == 0, err
    sites = set(az.from_netcdf(user_folder / "nuts" / "posterior.nc").posterior.data_vars)
    assert sites and all(math.isfinite(v) for v in json.loads((user_folder / "nuts" / "summary.json").read_text())
                         .values() if isinstance(v, float))

    status, err = run("compare", "--run", "run", "--subset", 3, "--chains", 2, "--warmup", 40, "--samples", 40,
                      "--iwae-samples", 20, "--elbo-samples", 10, "--refine-steps", 2, "--out", "cmp", capsys=capsys)
    assert status == 0, err
    report = json.loads((user_folder / "cmp" / "report.json").read_text())
    assert math.isfinite(report["amortization_gap"]) and math.isfinite(report["approximation_gap"])

    status, err = run("fit", "--resume", "run", "--epochs", 2, "--no-progress", capsys=capsys)
    assert status == 0, err
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1] == 2


def test_a_global_latent_is_refused_in_one_line_before_training(user_folder, capsys):
    """tau outside the data plate is no per-point latent: one line, exit 2, nothing written."""
    status, err = fit_case("zoo_plain", "zoo_global", "amortized", "digits", (), "global", capsys)
    assert status == 2 and len(err) == 1 and "tau" in err[0], err
    assert not (user_folder / "global").exists()
