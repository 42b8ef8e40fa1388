"""Resume, signals, NaN guard, determinism and argument fuzzing."""

import json
import math
import random
import re
import signal
import subprocess
import importlib
import sys
import time
from unittest import mock

import pyro
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae.runs.assembly import build
from pyro_vae.data import load_dataset
from pyro_vae.plumbing.checkpoint import load_checkpoint
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.runs.config import EvaluationSettings
from pyro_vae import FitConfig, fit, resume
from pyro_vae.fit import main
from pyro_vae.infer.svi.train import Interrupted, NonFiniteLoss, make_svi, train_epoch

QUIET = {"progress": False, "log": lambda *a: None}


def small(out, guide="amortized", epochs=4):
    return FitConfig(guide=guide, epochs=epochs, hidden_dims=(32,), batch_size=64, out=str(out),
                     evaluation=EvaluationSettings(10, 50))


def same_state(dir_a, dir_b):
    a, b = load_checkpoint(dir_a / "checkpoint.pt"), load_checkpoint(dir_b / "checkpoint.pt")
    assert a["epoch"] == b["epoch"]
    for part in ("model", "guide"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            if isinstance(a[part][key], torch.Tensor):
                assert torch.equal(a[part][key], b[part][key]), (part, key)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]  # noqa: E731
    assert strip(a["metrics"]) == strip(b["metrics"])


class StopAfter:
    """should_stop that turns true after ``n`` calls (one call per step)."""

    def __init__(self, n):
        self.n = n

    def __call__(self):
        self.n -= 1
        return self.n < 0


@pytest.mark.parametrize("guide", ["amortized", "meanfield"])
def test_stopped_and_resumed_equals_straight_through(tmp_path, guide):
    fit(small(tmp_path / "straight", guide), **QUIET)
    with pytest.raises(Interrupted) as info:
        fit(small(tmp_path / "stopped", guide), should_stop=StopAfter(55), **QUIET)  # 24 steps an epoch
    assert info.value.epoch == 3
    assert load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")["epoch"] == 2
    resume(tmp_path / "stopped", **QUIET)
    same_state(tmp_path / "straight", tmp_path / "stopped")
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert summary["epochs"] == 4


def test_same_seed_same_numbers_for_every_guide(tmp_path):
    for guide in ("amortized", "meanfield"):
        fit(small(tmp_path / f"{guide}-a", guide, epochs=2), **QUIET)
        fit(small(tmp_path / f"{guide}-b", guide, epochs=2), **QUIET)
        same_state(tmp_path / f"{guide}-a", tmp_path / f"{guide}-b")


def test_resume_can_extend_and_refuses_finished_runs(tmp_path):
    fit(small(tmp_path / "run", epochs=2), **QUIET)
    with pytest.raises(UsageError, match="already ran 2 of 2 epochs"):
        resume(tmp_path / "run", **QUIET)
    result = resume(tmp_path / "run", epochs=3, **QUIET)
    assert [m["epoch"] for m in result.metrics] == [1, 2, 3]


def test_resume_rejects_other_settings(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--resume", str(tmp_path), "--lr", "0.1"])
    assert info.value.code == 2 and "only --epochs may change, not --lr" in capsys.readouterr().err


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path, capsys, monkeypatch):
    """The run stops naming the epoch and step of the first non-finite loss (the losses are read
    every READ_EVERY steps, so the read comes later), here found by watching every SVI step."""
    import nan_model  # noqa: F401  (registers nan_after_30)

    losses, plain_step = [], pyro.infer.SVI.step

    def watched_step(svi, *args, **kwargs):
        loss = plain_step(svi, *args, **kwargs)
        losses.append(float(loss))
        return loss

    monkeypatch.setattr(pyro.infer.SVI, "step", watched_step)
    steps_per_epoch = math.ceil(load_dataset("digits").num_train / 128)  # 12
    nan_model.NanAfter30.calls = 0
    config = FitConfig(model="nan_after_30", epochs=5, hidden_dims=(16,), batch_size=128, out=str(tmp_path / "run"))
    with pytest.raises(NonFiniteLoss) as info:
        fit(config, **QUIET)
    first = next(i for i, loss in enumerate(losses) if not math.isfinite(loss))
    epoch, step = first // steps_per_epoch + 1, first % steps_per_epoch + 1
    assert step < steps_per_epoch  # the read, at the end of the epoch, comes steps later
    assert (info.value.epoch, info.value.step) == (epoch, step)  # epoch 3, step 2 (the likelihood's 31st call)
    assert math.isnan(info.value.loss)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == epoch - 1
    nan_model.NanAfter30.calls = 0
    with pytest.raises(SystemExit) as exit_info:
        main(["--import", "nan_model", "--model", "nan_after_30", "--epochs", "5", "--hidden-dims", "16",
              "--out", str(tmp_path / "cli"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert f"non-finite loss (nan) at epoch {epoch}, step {step};" in err and "--lr" in err and "Traceback" not in err


def test_parameters_gone_non_finite_stop_as_a_non_finite_loss():
    """A run whose parameters are not finite at a validated step (one resumed from such a
    checkpoint, say) fails the distributions' argument check before any loss exists: that is
    reported as non-finite parameters, the check's ValueError kept as the cause, not raised (a
    traceback from fit)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = load_dataset("digits", num_train=256)
    model, guide = build(FitConfig(hidden_dims=(16,)), data)
    svi = make_svi(model, guide, 1e-3)
    train_epoch(svi, data, 64, progress=False)
    with torch.no_grad():
        next(guide.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteLoss) as info, pyro.validation_enabled(True):
        train_epoch(svi, data, 64, progress=False)
    assert (info.value.step, info.value.what) == (1, "parameters") and math.isnan(info.value.loss)
    assert isinstance(info.value.__cause__, ValueError)


def test_an_epoch_whose_last_update_is_not_finite_stops_before_it_is_scored_or_saved(tmp_path, capsys):
    """The last step's loss is finite but its update is not: fit stops with one line naming that
    step, before scoring the epoch (whose argument checks would raise) or saving it, and the
    checkpoint keeps the epoch before, finite."""
    adam_step, calls = torch.optim.Adam.step, []

    def poisoned_step_24(optimizer, *args, **kwargs):  # the digits' 12 steps an epoch: epoch 2's last
        result = adam_step(optimizer, *args, **kwargs)
        calls.append(1)
        if len(calls) == 24:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(math.nan)
        return result

    with mock.patch.object(torch.optim.Adam, "step", poisoned_step_24), pytest.raises(SystemExit) as stop:
        main(["--epochs", "3", "--hidden-dims", "16", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 1 and len(err.splitlines()) == 1, err
    assert "non-finite parameters (nan) at epoch 2, step 12;" in err and "still holds epoch 1" in err
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(value).all() for part in ("model", "guide") for value in state[part].values()
               if value.is_floating_point())


def _gradient_norms_at_step(clip_norm):
    """The global gradient norm the dense Adam sees at each step of one epoch."""
    pyro.set_rng_seed(0)
    data = load_dataset("digits", num_train=256)
    model, guide = build(FitConfig(hidden_dims=(16,)), data)
    svi = make_svi(model, guide, 1e-3, clip_norm=clip_norm)
    norms, adam_step = [], torch.optim.Adam.step

    def recording_step(optimizer, *args, **kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return adam_step(optimizer, *args, **kwargs)

    with mock.patch.object(torch.optim.Adam, "step", recording_step):
        train_epoch(svi, data, 64, progress=False)
    return norms


def test_clip_norm_bounds_the_gradient():
    assert min(_gradient_norms_at_step(None)) > 1.0  # unclipped gradients are large here
    clipped = _gradient_norms_at_step(1e-3)
    assert len(clipped) == 4 and max(clipped) <= 1e-3 * (1 + 1e-5)


def _run_fit(out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_vae.fit", "--epochs", "12", "--hidden-dims", "32", "--batch-size", "16",
         "--eval-iwae-samples", "10", "--out", str(out), "--no-progress", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(out, proc):
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_killed_process_resumes_to_the_same_result(tmp_path, how):
    straight = _run_fit(tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()
    seconds = json.loads((tmp_path / "straight" / "summary.json").read_text())["seconds"]
    rng = random.Random()
    for attempt in range(5):  # a kill that lands after the run finished proves nothing: try again
        out = tmp_path / f"killed{attempt}"
        proc = _run_fit(out)
        _wait_for_checkpoint(out, proc)
        time.sleep(rng.uniform(0, 0.8 * seconds))
        proc.send_signal(getattr(signal, how))
        code = proc.wait(timeout=600)
        if code != 0:
            break
    else:
        pytest.fail("the run always finished before the signal")
    err = proc.stderr.read()
    if how == "SIGKILL":
        assert code == -signal.SIGKILL
    else:
        assert code == 128 + signal.SIGINT, err
        assert f"Resume with: python -m pyro_vae.fit --resume {out}" in err
    if how == "SIGINT":  # a clean stop leaves no temporary file behind
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # killed anywhere, every file in place is whole: writes go to a temporary name first
    state = load_checkpoint(out / "checkpoint.pt")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] \
        if (out / "metrics.jsonl").exists() else []
    # (a kill can land after the last epoch's checkpoint, while the figures are drawn)
    assert [m["epoch"] for m in metrics] == list(range(1, state["epoch"] + 1))
    assert json.loads((out / "config.json").read_text())["epochs"] == 12
    resumed = subprocess.run([sys.executable, "-m", "pyro_vae.fit", "--resume", str(out), "--no-progress"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    same_state(tmp_path / "straight", out)


ARG_ATOMS = ["--model", "--guide", "--dataset", "--data-dir", "--binarize", "--latent-dim", "--hidden-dims",
             "--epochs", "--batch-size", "--lr", "--elbo", "--seed", "--device", "--out", "--resume", "--clip-norm",
             "--local-lr", "--num-train", "--iwae-samples", "--split", "--max-examples", "--run", "--subset",
             "--fit-from-scratch", "--passes", "--chains", "--warmup", "bernoulli_mlp", "amortized",
             "meanfield", "digits", "mnist", "-1", "0", "1", "2.5", "nan", "inf", "1e9", "", "400,x", "cuda", "cpu",
             "dynamic", "--", "-h"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(ARG_ATOMS), st.text(max_size=8)), max_size=8))
def test_parsers_never_traceback(monkeypatch, argv):
    """Random argument vectors: each command either parses or exits 0/2, never raises."""
    # the commands' modules (``pyro_vae.fit`` the attribute is the API's function)
    fit_command, evaluate_command, compare_command = (importlib.import_module(f"pyro_vae.{name}")
                                                      for name in ("fit", "evaluate", "compare"))
    ran = []

    def refuse(*args, **kwargs):  # the API called: the flags parsed; stop here as a bad value would
        ran.append(args)
        raise UsageError("not run")

    monkeypatch.setattr(fit_command, "fit", lambda config, *a, **k: (config.validate(), ran.append(config)))
    monkeypatch.setattr(fit_command, "resume", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(evaluate_command, "evaluate", refuse)
    monkeypatch.setattr(compare_command, "compare", refuse)
    for command in (fit_command.main, evaluate_command.main, compare_command.main):
        try:
            command(list(argv))
        except SystemExit as exit_info:
            assert exit_info.code in (0, 2, None), (argv, exit_info.code)


def test_second_signal_stops_at_once_without_traceback(tmp_path):
    out = tmp_path / "run"
    proc = _run_fit(out)
    _wait_for_checkpoint(out, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=600)
    err = proc.stderr.read()
    assert code == 128 + signal.SIGINT, err  # the run takes seconds; the signals arrive at its start
    assert "Traceback" not in err and "Resume with: python -m pyro_vae.fit --resume" in err
    state = load_checkpoint(out / "checkpoint.pt")
    # the first signal may already have stopped the run cleanly, naming the epoch it kept
    held = re.search(r"checkpoint.pt holds epoch (\d+)", err)
    assert (state["epoch"] == int(held.group(1))) if held else "holds the last finished epoch" in err, err
    assert state["epoch"] < 12
    assert len(state["metrics"]) == state["epoch"]
    resumed = subprocess.run([sys.executable, "-m", "pyro_vae.fit", "--resume", str(out), "--no-progress"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 12
