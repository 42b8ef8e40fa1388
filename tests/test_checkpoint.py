import json
import os

import pytest
import torch

from pyro_vae.plumbing.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pyro_vae.plumbing.files import atomic_path
from pyro_vae import FitConfig, fit, load_run


class CodePayload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_tensors_and_rng(tmp_path):
    state = {"model": {"w": torch.randn(3, 2)}, "epoch": 4, "rng": rng_state(), "metrics": [{"epoch": 1, "x": 0.5}]}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["epoch"] == 4 and loaded["metrics"] == state["metrics"]
    # restoring the RNG state replays the same random numbers
    set_rng_state(loaded["rng"])
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    set_rng_state(loaded["rng"])
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyro_vae.plumbing.checkpoint/1", "payload": CodePayload(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_foreign_and_missing_files(tmp_path):
    save_checkpoint(tmp_path / "good.pt", {"w": torch.randn(100)})
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "truncated.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not a pyro_vae checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="missing.pt: no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_fit_checkpoint_round_trip(tmp_path):
    result = fit(FitConfig(epochs=2, latent_dim=3, hidden_dims=(32,), out=str(tmp_path / "run")), progress=False, log=lambda *a: None)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # tensors only
    assert state["epoch"] == 2 and len(state["metrics"]) == 2
    assert state["optimizer"]["names"]["dense"] and state["optimizer"]["optimizers"]["dense"]["state"]
    model, guide, data, config, _ = load_run(tmp_path / "run")
    for a, b in zip(result.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    x = data.test_x[:10]
    assert torch.allclose(guide.posterior(x).mean, result.guide.posterior(x).mean)
    assert config.latent_dim == 3 and config.hidden_dims == (32,)


def test_load_run_rejects_incompatible_config(tmp_path):
    fit(FitConfig(epochs=1, hidden_dims=(16,), out=str(tmp_path / "run")), progress=False, log=lambda *a: None)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    config = json.loads(state["config"])
    config["latent_dim"] = 5
    state["config"] = json.dumps(config)
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="checkpoint.pt: does not match its configuration"):
        load_run(tmp_path / "run")
