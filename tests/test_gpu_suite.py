"""benchmarks/gpu_suite.py without a GPU: its dry run builds and parses every part's commands, a bad flag
fails it, the runner prints each part's rows as the part ends and goes on after a failure or a timeout,
and ``--out`` never reuses a non-empty directory."""

import importlib.util
import json
import sys
from argparse import Namespace

import pytest

from conftest import REPO, make_mnist_dir

spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu_suite.py")
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "mnist"
    make_mnist_dir(folder)
    return folder


def parts(mode_flags, out, mnist):
    args = suite.parser().parse_args([*mode_flags, "--data-dir", str(mnist)])
    return suite.build_parts(args, out, mnist)


@pytest.mark.parametrize("mode", [["--quick"], []], ids=["quick", "full"])
def test_dry_run_lists_every_part_and_each_parses(mode, mnist, tmp_path, capsys):
    out = tmp_path / "suite"
    assert suite.main([*mode, "--dry-run", "--data-dir", str(mnist), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()  # a dry run writes nothing
    assert "torch " in printed and "pyro " in printed and "device: " in printed
    assert "vector ISA: " in printed and "torch threads" in printed  # benchmarks/machine.py's processor line
    names = [p.name for p in parts(mode, out, mnist)]
    assert {"cuda-tests", "fit-mnist", "fit-speed", "posterior", "many-points", "burda-trace", "burda-iwae-5",
            "burda-iwae-50", "burda-iwae-dreg-50"} <= set(names)
    blocks = printed.split("\n## ")[1:]
    assert [b.split(":")[0] for b in blocks] == names
    iwae = suite.fit_lacks({"--elbo": "iwae", "--particles": "5"})
    for block in blocks:
        verdict = block.splitlines()[1]
        if block.startswith("burda-iwae") and iwae:  # --elbo iwae / --particles not in pyro_vae.fit yet
            assert verdict.startswith("not available: ") and "other flags parse" in verdict, block
        else:
            assert verdict == "ok", block
    assert f"{len(names)} parts, 0 with errors" in printed


def test_quick_mode_fits_one_device_call(mnist, tmp_path):
    quick = parts(["--quick"], tmp_path, mnist)
    assert sum(p.expected for p in quick) <= suite.QUICK_TARGET <= suite.DEFAULT_BUDGET < 600
    assert all(p.expected < p.limit <= 590 for p in quick + parts([], tmp_path, mnist))


@pytest.mark.parametrize("target", ["pyro_vae.fit", "pyro_vae.evaluate", "fit_speed.py", "nuts_many_points.py",
                                    "gpu_suite.py"])
def test_a_misspelt_flag_fails_the_dry_run(target, mnist, tmp_path):
    for part in parts(["--quick"], tmp_path, mnist):
        for argv in part.commands:
            if any(a.endswith(target) for a in argv[1:3]) and not part.missing:
                assert suite.check_part(part) == "ok"
                argv[argv.index("--device")] = "--devise"
                verdict = suite.check_part(part)
                assert verdict.startswith("error: ") and "--devise" in verdict, verdict
                return
    pytest.fail(f"no part runs {target}")


def test_runner_prints_rows_as_parts_end_and_goes_on(tmp_path, capsys):
    table = "| trainer | a |\\n|---|---|\\n| fast | 1.5 |"

    def part(name, code, limit=60, needs=None, missing=None):
        return suite.Part(name, f"{name} part", [[sys.executable, "-c", code]], 1,
                          lambda p, outs: [(f"{r[0]} check", f"{r[1]} s", "fine")
                                           for r in suite.table_rows(outs[0], "trainer")],
                          needs=needs, limit=limit, missing=missing)

    run = [part("first", f"print('{table}')"),
           part("broken", "import sys; print('RuntimeError: CUDA error: out of memory', file=sys.stderr); "
                          "sys.exit(1)"),
           part("slow", "import time; time.sleep(60)", limit=1),
           part("after-broken", f"print('{table}')", needs="broken"),
           part("new-flag", "", missing=lambda: "pyro_vae.fit has no --particles flag"),
           part("last", f"print('{table}')")]
    out = tmp_path / "run"
    status = suite.run_suite(run, Namespace(budget=120), out, "quick", {"device": "test", "torch": "t", "pyro": "p",
                                                                        "python": "3", "cuda": None,
                                                                        "machine": "CPU: test"})
    printed = capsys.readouterr().out
    assert status == 1
    lines = [line for line in printed.splitlines() if line.startswith("| ") and "| part |" not in line]
    streamed = lines[: len(run)]
    assert [line.split(" | ")[0][2:] for line in streamed] == [p.name for p in run]
    assert "fast check | 1.5 s" in streamed[0]
    assert "error (exit 1, command 1 of 1): RuntimeError: CUDA error: out of memory" in streamed[1]
    assert "timeout: stopped at its limit" in streamed[2]
    assert "skipped: broken did not finish" in streamed[3]
    assert "not available: pyro_vae.fit has no --particles flag" in streamed[4]
    assert "fast check" in streamed[5]
    assert lines[len(run):] == streamed  # the final summary table repeats them
    assert "\nCPU: test\n" in printed  # the summary names the processor
    record = json.loads((out / "summary.json").read_text())
    assert record["finished"] and [r["status"] for r in record["rows"]] == [
        "ok", "failed", "timeout", "skipped", "not available", "ok"]
    assert "| first | fast check |" in (out / "summary.md").read_text()


def test_out_must_be_new_or_empty(tmp_path, capsys):
    (tmp_path / "old").write_text("a result")
    with pytest.raises(SystemExit) as stop:
        suite.main(["--quick", "--out", str(tmp_path)])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("gpu_suite: error: --out") and "\n" not in error
    assert (tmp_path / "old").read_text() == "a result"


def test_parts_whose_fit_flags_are_missing_are_listed_not_available(mnist, tmp_path, capsys, monkeypatch):
    """Before pyro_vae.fit takes --elbo iwae / --particles, the burda-iwae parts print a one-line
    ``not available`` row, their other flags still parsed, and the dry run passes."""
    assert suite.fit_lacks({"--no-such-flag": "1"}) == "pyro_vae.fit has no --no-such-flag flag"
    assert suite.fit_lacks({"--elbo": "no-such-objective"}).startswith("pyro_vae.fit --elbo takes ")
    monkeypatch.setattr(suite, "fit_lacks", lambda flags: "pyro_vae.fit has no --particles flag"
                        if "--particles" in flags else None)
    assert suite.main(["--quick", "--dry-run", "--data-dir", str(mnist), "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out
    for name in ("burda-iwae-5", "burda-iwae-50", "burda-iwae-dreg-50"):
        assert (f"## {name}:" in printed and printed.split(f"## {name}:")[1].splitlines()[1]
                == "not available: pyro_vae.fit has no --particles flag (its other flags parse)")
    assert printed.split("## burda-trace:")[1].splitlines()[1] == "ok"
