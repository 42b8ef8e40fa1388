import argparse
import json
import math
import re
import subprocess
import sys

import pytest

from conftest import REPO, make_mnist_dir
from pyro_vae.fit import main, parser

RUN_FILES = {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt",
             "reconstructions.png", "samples.png", "latent.png", "elbo.png"}


def run_main(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    return exit_info.value.code, err


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--guide", "nope"], "unknown guide 'nope'"),
    (["--dataset", "nope"], "invalid choice"),
    (["--lr", "-0.1"], "expected a positive"),
    (["--lr", "abc"], "expected a positive"),
    (["--latent-dim", "0"], "expected a positive integer"),
    (["--epochs", "-3"], "expected a positive integer"),
    (["--hidden-dims", "400,x"], "comma-separated"),
    (["--binarize", "maybe"], "invalid choice"),
    (["--device", "tpu"], "device must be"),
    (["--bogus-flag"], "unrecognized arguments"),
    (["--dataset", "mnist"], "needs --data-dir"),
    (["--dataset", "binarized_mnist", "--data-dir", "/nonexistent"], "no such directory"),
    (["--dataset", "digits", "--binarize", "none"], "not binary"),
    (["--import", "no_such_module_xyz"], "--import no_such_module_xyz"),
])
def test_usage_errors_exit_2_with_one_line(args, message, capsys, tmp_path):
    code, err = run_main([*args, "--out", str(tmp_path / "run"), "--epochs", "1"] if "--epochs" not in args else [*args, "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_data_dir_without_files(tmp_path, capsys):
    code, err = run_main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "missing train-images-idx3-ubyte.gz" in err


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    code, err = run_main(["--out", str(out), "--epochs", "1"], capsys)
    assert code == 2 and "not empty" in err
    assert (out / "summary.json").read_text() == "{}"


def test_fit_end_to_end_subprocess(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae.fit", "--guide", "amortized", "--epochs", "3", "--hidden-dims", "32",
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert all({"train_elbo", "test_elbo", "seconds"} <= m.keys() for m in metrics)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["test_elbo"] == metrics[-1]["test_elbo"]
    assert summary["test_elbo"] < 0 and summary["seconds"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "bernoulli_mlp" and config["binarize"] == "dynamic"
    assert config["device_resolved"] == "cpu" and "torch" in config["versions"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_fit_on_small_mnist_files(tmp_path, capsys):
    make_mnist_dir(tmp_path / "data", n_train=64, n_test=16)
    main(["--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--epochs", "2", "--hidden-dims", "16",
          "--latent-dim", "4", "--out", str(tmp_path / "run"), "--no-progress"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 2
    assert (tmp_path / "run" / "latent.png").stat().st_size > 0


def test_gaussian_model_with_continuous_data(tmp_path):
    main(["--dataset", "digits", "--model", "gaussian_mlp", "--binarize", "none", "--epochs", "2",
          "--hidden-dims", "16", "--out", str(tmp_path / "run"), "--no-progress"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isfinite(summary["test_elbo"]) and summary["test_elbo"] < 0


def test_help_explains_every_flag(capsys):
    """Every option of ``fit``'s parser has a help that says more than the flag's own name, and
    ``--help`` shows each flag and its whole help; no metavar is a dotted destination
    (``MCMC.CHAINS``: a grouped setting without a metavar of its own)."""
    p = parser()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    squashed = re.sub(r"\s+", "", text)  # --help wraps lines (and may break after a hyphen)
    formatter = p._get_formatter()
    options = [action for action in p._actions if action.option_strings]
    assert len(options) == len(p._actions) and len(options) >= 40  # fit takes no positional arguments
    for action in options:
        flag = action.option_strings[-1]
        assert action.help and action.help != argparse.SUPPRESS, f"{flag} has no help"
        expanded = formatter._expand_help(action)  # %(default)s filled in, as --help prints it
        said = set(re.findall(r"[a-z0-9]+", re.sub(r"\(default[^)]*\)", "", expanded).lower()))
        named = {word for option in action.option_strings for word in re.findall(r"[a-z0-9]+", option.lower())}
        assert said - named - {"the", "a", "an", "of"}, f"{flag}: {expanded!r} says no more than its name"
        for option in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), f"--help does not show {option}"
        assert re.sub(r"\s+", "", expanded) in squashed, f"--help does not show the help of {flag}"
    dotted = re.findall(r"\b[A-Z][A-Z0-9_]*\.[A-Z0-9_.]+\b", text)
    assert not dotted, f"metavars that are destinations: {sorted(set(dotted))}"


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_line = next(line for line in readme.splitlines() if "pip install" in line and "pytest" in line)
    assert test_line in ci
