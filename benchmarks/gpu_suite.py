"""Everything the project measures on a GPU, in one command that fits one 600 s device call.

    python benchmarks/gpu_suite.py --quick [--data-dir shared/data/mnist] [--out DIR] [--budget 540]
    python benchmarks/gpu_suite.py --quick --dry-run        # on CPU: build and parse every part's command
    python benchmarks/gpu_suite.py --parts burda-trace,burda-iwae-50   # full-size parts, a few per call

Each part runs as its own process (its output in ``DIR/logs/``); when it ends, its result rows are
printed at once (stdout flushed), so a run cut short still reports what finished. A part that fails
prints a one-line error row and the suite goes on. Parts start while ``--budget`` seconds (default 540,
inside the device's 600 s per command) are left and are stopped when it runs out; a part is also
stopped at its own limit. The end: one markdown table of all rows, also in ``DIR/summary.json``
(rewritten after every part) and ``DIR/summary.md``. ``DIR`` (``--out``, default
``runs/gpu-suite-<timestamp>``) must be new or empty.

The parts, in the order they run, with their sizes; seconds are estimates for a cold H200 (process start,
data loading and Inductor compiles included), scaled from the work each part does and the CPU figures in
docs/benchmarks.md, not measurements:

================  ======================================================  =============================================
part              --quick (about 480 s in all)                            full (default; about 1,700 s: use --parts)
================  ======================================================  =============================================
cuda-tests        ``pytest tests/test_cuda.py``: compiled SVI against      the same (~100 s)
                  eager, sync count, compiled NUTS, per-point NUTS and
                  ChEES, all on digits / toy data (~100 s)
fit-mnist         784-400-50 ``pyro_vae.fit``, 2 epochs, compiled;         10 epochs; IWAE K = 5000 on all 10,000 test
                  ``pyro_vae.evaluate`` IWAE K = 5000 on 1,000 test        images (5e7 decoder passes) (~120 s)
                  images (5e6 decoder passes) (~60 s)
burda-trace       Burda et al.'s recipe (``benchmarks/mnist_nll.py``'s     all 60,000 images, 4 epochs (stages i = 0, 1
burda-iwae-5      flags: 200-200 tanh, latent 50, batch 20, Burda lr       of the schedule: 12,000 steps); K = 5000 on
burda-iwae-50     schedule, ``--compile off`` for all four) per            all 10,000 test images (~150 s each)
burda-iwae-dreg-50  objective: ``--elbo trace``; ``iwae --particles 5``;
                  ``iwae --particles 50``; ``iwae-dreg --particles 50``.
                  1 epoch of the first 10,000 images (500 steps), then
                  K = 5000 on 1,000 test images (~30 s each)
fit-speed         ``benchmarks/fit_speed.py --epochs 2``: five trainers    ``--epochs 5`` (~120 s)
                  x 2 MNIST epochs at batch 128, two compiles (~75 s)
posterior         on fit-mnist's run: NUTS, 200 test points in one batch,  1,000 points, 200 + 200; AIS 500 x 16
                  4 chains, 100 + 100, compiled (a 10 + 10 call compiles  (~150 s)
                  first); AIS 200 steps x 16 chains (~55 s)
many-points       ``benchmarks/nuts_many_points.py``: 100 points, 100 +    1,000 points, 200 + 200, all five methods,
                  100, joint, per-point-capped, chees, decoder trained 1   decoder trained 2 epochs (~300 s)
                  epoch (~70 s)
many-points-10k   (full only)                                              10,000 points, per-point-capped and chees
                                                                           (~300 s)
================  ======================================================  =============================================

The four ``burda-*`` parts follow issue #26; ``--elbo iwae|iwae-dreg`` and ``--particles`` are new in
``pyro_vae.fit``: where the installed parser does not accept them, those parts print a one-line
``not available: <reason>`` row instead of running (the dry run then still parses the rest of their flags).

``--dry-run`` needs no GPU: it builds every part's command lines and parses each with the parser it will
meet (``pyro_vae.fit.parser()``, ``pyro_vae.evaluate.parser()``, each benchmark script's own argparse,
reached by calling its ``main`` with ``parse_args`` stopped right after parsing; for pytest, the test file
must exist), checks the data folder and ``--out``, prints the plan and exits 1 if any part does not parse.

On a lent device machine only the checkout travels: MNIST must be inside it (``shared/data/mnist``, the
default when it exists), and pyro-ppl and arviz must be installed there (carried as wheels).
"""

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: pyro_vae importable without an install
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # machine.py, also where this file is loaded by its path (the tests)

import torch  # noqa: E402
from machine import machine_header  # noqa: E402

DEFAULT_BUDGET = 540  # seconds: the device runs one command for at most 600
MIN_START = 30  # a part starts only while this many seconds of the budget are left
QUICK_TARGET = 480  # the quick parts' estimates must add up to no more than this (tests/test_gpu_suite.py)
ROWS_PREFIX = "gpu_suite-rows: "  # how the posterior part hands its rows back
BURDA_OBJECTIVES = [("burda-trace", "trace", None), ("burda-iwae-5", "iwae", 5), ("burda-iwae-50", "iwae", 50),
                    ("burda-iwae-dreg-50", "iwae-dreg", 50)]

# Every size in one place: mode -> setting -> value (the module docstring's table describes them).
SIZES = {
    "quick": dict(fit_epochs=2, eval_examples=1000, burda_epochs=1, burda_train=10000, burda_eval=1000,
                  speed_epochs=2, points=200, nuts_warmup=100, nuts_samples=100, ais_steps=200, ais_chains=16,
                  many=[("many-points", 100, 100, 1, "joint,per-point-capped,chees", 70)]),
    "full": dict(fit_epochs=10, eval_examples=None, burda_epochs=4, burda_train=None, burda_eval=None,
                 speed_epochs=5, points=1000, nuts_warmup=200, nuts_samples=200, ais_steps=500, ais_chains=16,
                 many=[("many-points", 1000, 200, 2, "joint,blocks,per-point,per-point-capped,chees", 300),
                       ("many-points-10k", 10000, 200, 2, "per-point-capped,chees", 300)]),
}
EXPECTED = {  # seconds on a cold H200, per mode (estimates; see the module docstring)
    "quick": {"cuda-tests": 100, "fit-mnist": 60, "burda": 30, "fit-speed": 75, "posterior": 55},
    "full": {"cuda-tests": 100, "fit-mnist": 120, "burda": 150, "fit-speed": 120, "posterior": 150},
}


def python(*args):
    return [sys.executable, *map(str, args)]


@dataclass
class Part:
    """One step of the suite: commands run one after the other, then ``collect`` reads their results."""

    name: str
    about: str
    commands: list  # argv lists
    expected: int  # seconds, estimated
    collect: object  # (part, [stdout text of each command]) -> rows [(check, time, result)]
    needs: str = None  # a part whose run directory this one reads
    missing: object = None  # () -> why this part cannot run with the installed code, or None
    limit: int = 0  # seconds before the part is stopped (0: 2.5x expected, at most 590)
    out: Path = None  # the part's run directory, where it has one
    fit_flags: dict = field(default_factory=dict)  # pyro_vae.fit flags the part needs (probed by ``missing``)
    seconds: list = field(default_factory=list)  # each command's, once run

    def __post_init__(self):
        self.limit = self.limit or min(590, int(2.5 * self.expected) + 30)


# ------------------------------------------------------------------ the parts

def build_parts(args, out, data_dir):
    mode = "quick" if args.quick else "full"
    size, expected = SIZES[mode], EXPECTED[mode]
    fit_epochs = args.epochs or size["fit_epochs"]
    points = args.points or size["points"]
    parts = [Part("cuda-tests", "tests/test_cuda.py", [python("-m", "pytest", "-q", "-p", "no:cacheprovider",
                                                              "tests/test_cuda.py")],
                  expected["cuda-tests"], collect_pytest)]

    fit_dir = out / "fit-mnist"
    evaluate = ["--iwae-samples", "5000", "--device", "cuda", "--no-progress"]
    if size["eval_examples"]:
        evaluate += ["--max-examples", str(size["eval_examples"])]
    parts.append(Part(
        "fit-mnist", f"784-400-50, {fit_epochs} epochs, compiled; IWAE K = 5000",
        [python("-m", "pyro_vae.fit", "--dataset", "mnist", "--data-dir", data_dir, "--latent-dim", "50",
                "--hidden-dims", "400", "--epochs", fit_epochs, "--device", "cuda", "--compile", "on",
                "--out", fit_dir, "--no-progress"),
         python("-m", "pyro_vae.evaluate", fit_dir, *evaluate)],
        expected["fit-mnist"], collect_fit_mnist, out=fit_dir))

    recipe = load_script("mnist_nll").RECIPE
    for name, elbo, particles in BURDA_OBJECTIVES:
        run_dir = out / name
        flags = {"--elbo": elbo, **({"--particles": str(particles)} if particles else {})}
        train = ["--num-train", str(size["burda_train"])] if size["burda_train"] else []
        evaluate = ["--iwae-samples", "5000", "--device", "cuda", "--no-progress"]
        if size["burda_eval"]:
            evaluate += ["--max-examples", str(size["burda_eval"])]
        objective = " ".join(f"{k} {v}" for k, v in flags.items())
        parts.append(Part(
            name, f"Burda et al. recipe, {objective}",
            [python("-m", "pyro_vae.fit", *recipe, "--data-dir", data_dir, *train, "--epochs", size["burda_epochs"],
                    *[x for kv in flags.items() for x in kv], "--device", "cuda", "--compile", "off",
                    "--out", run_dir, "--eval-max-examples", "100", "--no-progress"),
             python("-m", "pyro_vae.evaluate", run_dir, *evaluate)],
            expected["burda"], collect_burda, out=run_dir, fit_flags=flags, missing=lambda f=flags: fit_lacks(f)))

    parts.append(Part("fit-speed", f"benchmarks/fit_speed.py, {size['speed_epochs']} epochs",
                      [python("benchmarks/fit_speed.py", "--data-dir", data_dir, "--device", "cuda",
                              "--epochs", size["speed_epochs"])],
                      expected["fit-speed"], collect_fit_speed))
    parts.append(Part(
        "posterior", f"NUTS and AIS on {points} test points of fit-mnist's run",
        [python("benchmarks/gpu_suite.py", "--posterior", fit_dir, "--points", points, "--nuts-warmup",
                size["nuts_warmup"], "--nuts-samples", size["nuts_samples"], "--ais-steps", size["ais_steps"],
                "--ais-chains", size["ais_chains"], "--device", "cuda")],
        expected["posterior"], collect_posterior, needs="fit-mnist"))
    for name, n, iterations, epochs, methods, seconds in size["many"]:
        parts.append(Part(
            name, f"benchmarks/nuts_many_points.py, {n} points, {iterations} + {iterations}",
            [python("benchmarks/nuts_many_points.py", "--data-dir", data_dir, "--device", "cuda", "--points", n,
                    "--warmup", iterations, "--samples", iterations, "--epochs", epochs, "--methods", methods)],
            seconds, lambda part, outputs, n=n: collect_many_points(outputs, n)))
    return parts


def fit_lacks(flags):
    """Why the installed ``pyro_vae.fit`` parser cannot take ``flags`` ({"--elbo": name, ...}), or None."""
    from pyro_vae.fit import parser

    actions = parser()._option_string_actions
    for flag, value in flags.items():
        action = actions.get(flag)
        if action is None:
            return f"pyro_vae.fit has no {flag} flag"
        if action.choices is not None and value not in action.choices:
            return f"pyro_vae.fit {flag} takes {', '.join(map(str, action.choices))}, not {value}"
    return None


# ------------------------------------------------------------------ reading results

def collect_pytest(part, outputs):
    lines = [line for line in outputs[0].splitlines() if line.strip()]
    return [("tests/test_cuda.py", "", lines[-1].strip("= ") if lines else "no output")]


def read_json(path):
    return json.loads(Path(path).read_text())


def read_metrics(run_dir):
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines() if line.strip()]


def epoch_times(metrics):
    seconds = [m["seconds"] for m in metrics]
    later = f", then {statistics.median(seconds[1:]):.2f} s/epoch" if len(seconds) > 1 else ""
    return f"epoch 1 {seconds[0]:.1f} s{later}"


def eval_result(run_dir):
    result = read_json(Path(run_dir, "eval.json"))
    return (f"log p(x) {result['log_likelihood']:.2f} ± {result['log_likelihood_se']:.2f} "
            f"(K = {result['iwae_samples']}, {result['num_examples']} test images)")


def collect_fit_mnist(part, outputs):
    metrics, summary = read_metrics(part.out), read_json(part.out / "summary.json")
    config = read_json(part.out / "config.json")
    return [(f"fit 784-400-50, {len(metrics)} epoch(s), --compile {config['compile']}", epoch_times(metrics),
             f"test ELBO {summary['test_elbo']:.2f}"),
            ("IWAE log p(x) (pyro_vae.evaluate)", f"{part.seconds[1]:.0f} s", eval_result(part.out))]


def collect_burda(part, outputs):
    metrics, config = read_metrics(part.out), read_json(part.out / "config.json")
    train = sum(m["seconds"] for m in metrics)
    steps = -(-config["num_train"] // config["batch_size"]) * len(metrics)
    objective = " ".join(f"{k} {v}" for k, v in part.fit_flags.items())
    return [(f"Burda recipe, {objective}, {len(metrics)} epoch(s), {steps} steps", f"train {train:.0f} s "
             f"({1000 * train / steps:.1f} ms/step)", eval_result(part.out))]


def table_rows(text, header):
    """The cells of a printed markdown table's body rows (the header row starts with ``header``)."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith(f"| {header}")]


def collect_fit_speed(part, outputs):
    return [(f"fit_speed: {name}", f"{median} s/epoch (1st {first} s)", f"{ratio}x pytorch eager, test ELBO {elbo}")
            for name, elbo, first, median, ratio in table_rows(outputs[0], "trainer")]


def collect_posterior(part, outputs):
    for line in outputs[0].splitlines():
        if line.startswith(ROWS_PREFIX):
            return [tuple(row) for row in json.loads(line[len(ROWS_PREFIX):])]
    raise ValueError("the posterior part printed no rows")


def collect_many_points(outputs, points):
    return [(f"{points} points: {cells[0]}", f"{cells[2]} s (compile call {cells[1]} s)",
             f"min ESS/s {cells[6]}, max R-hat {cells[5]}, {cells[3]} leapfrog/it")
            for cells in table_rows(outputs[0], "method")]


# ------------------------------------------------------------------ the posterior part (a process of its own)

def posterior_part(args):
    """NUTS and AIS on ``--points`` test images of the run in ``--posterior``; prints its rows as JSON."""
    from pyro_vae.nn import frozen
    from pyro_vae.infer import ais
    from pyro_vae.infer.mcmc.sampling import diagnose, inference_data, sample_latents
    from pyro_vae.runs.rundir import load_run

    run = load_run(args.posterior, torch.device(args.device))
    x = run.data.test_x[: args.points]
    init = run.guide.posterior(x)
    common = dict(chains=4, init=init, compile=True)
    first = sample_latents(run.model, x, warmup=10, samples=10, seed=0, **common)[2]
    draws, stats, seconds = sample_latents(run.model, x, warmup=args.nuts_warmup, samples=args.nuts_samples,
                                           seed=1, **common)
    _, figures, _ = diagnose(inference_data(draws, stats, x), chains=4)
    with frozen(run.model), torch.no_grad():
        result = ais.ais_log_likelihood(run.model, x, ais.AISOptions(steps=args.ais_steps, chains=args.ais_chains),
                                        seed=0)
    rows = [(f"NUTS, {len(x)} points x 4 chains, {args.nuts_warmup} + {args.nuts_samples}, compiled",
             f"{seconds:.1f} s (compile call {first:.1f} s)",
             f"max R-hat {figures['max_r_hat']:.3f}, min bulk ESS {figures['min_ess_bulk']:.0f}, "
             f"{figures['divergences']} divergences"),
            (f"AIS, {len(x)} points, {result.steps} steps x {result.chains} chains", f"{result.seconds:.1f} s",
             f"log p(x) {result.mean:.2f} ± {result.se:.2f}")]
    print(ROWS_PREFIX + json.dumps(rows), flush=True)


# ------------------------------------------------------------------ the dry run: parse without running

class _Parsed(Exception):
    pass


@contextlib.contextmanager
def parse_only(argv0, argv):
    """Within: ``sys.argv`` is ``[argv0, *argv]`` and any argparse ``parse_args`` raises ``_Parsed``
    right after parsing, so a script's ``main`` stops before doing any work."""
    original, saved = argparse.ArgumentParser.parse_args, sys.argv

    def parse_args(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args, sys.argv = parse_args, [argv0, *argv]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args, sys.argv = original, saved


_SCRIPTS = {}


def load_script(stem):
    """benchmarks/<stem>.py as a module (not run: its ``main`` is not called)."""
    if stem not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"_gpu_suite_{stem}", ROOT / "benchmarks" / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[stem] = module
    return _SCRIPTS[stem]


def check_command(argv):
    """Parse one command line (``[python, ...]``) with the parser it will meet; raises ValueError if it fails."""
    args = argv[1:]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            if args[:2] == ["-m", "pytest"]:
                files = [a for a in args[2:] if not a.startswith("-") and a != "no:cacheprovider"]
                absent = [f for f in files if not (ROOT / f).exists()]
                if absent or not files:
                    raise ValueError(f"pytest: no such test file {', '.join(absent)}")
                return
            if args[0] == "-m":
                module = importlib.import_module(args[1])
                module.parser().parse_args(args[2:])
                return
            script = Path(args[0])
            if script.parent.name != "benchmarks" or not (ROOT / script).exists():
                raise ValueError(f"no such script {args[0]}")
            if script.stem == "gpu_suite":
                parser().parse_args(args[1:])
                return
            with parse_only(args[0], args[1:]):
                load_script(script.stem).main()
            raise ValueError(f"{args[0]}: main() returned without parsing its arguments")
    except _Parsed:
        return
    except SystemExit as stop:
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        raise ValueError(lines[-1] if lines else f"exit {stop.code}") from None


def without(argv, flags):
    """``argv`` without the flags (and their values) in ``flags``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        else:
            out.append(arg)
    return out


def check_part(part):
    """("ok" | "not available: ..." | "error: ...", detail): whether every command of ``part`` parses."""
    reason = part.missing() if part.missing else None
    try:
        for argv in part.commands:
            check_command(without(argv, part.fit_flags) if reason and "pyro_vae.fit" in argv else argv)
    except ValueError as error:
        return f"error: {one_line(error)}"
    return f"not available: {reason} (its other flags parse)" if reason else "ok"


# ------------------------------------------------------------------ running

class Stopped(Exception):
    """SIGTERM: the suite stops the part in progress and prints what it has."""


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def last_error(path):
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output on stderr"


def run_command(argv, log_base, seconds_left):
    """Run ``argv`` in its own process group, output to ``log_base``.out/.err; (status, seconds).
    status: "ok", "exit N" or "timeout"."""
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    with open(f"{log_base}.out", "w") as out, open(f"{log_base}.err", "w") as err:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=max(1.0, seconds_left))
        except (subprocess.TimeoutExpired, Stopped, KeyboardInterrupt) as stop:
            stop_group(proc)
            if not isinstance(stop, subprocess.TimeoutExpired):
                raise
            return "timeout", time.perf_counter() - start
    return ("ok" if code == 0 else f"exit {code}"), time.perf_counter() - start


def stop_group(proc):
    """SIGTERM to the process group the suite started for ``proc``, SIGKILL if it is still there after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def run_part(part, logs, deadline):
    """The part's rows, each a dict; its commands stop at the part's limit or the budget's end."""
    start = time.perf_counter()
    stop_at = min(start + part.limit, deadline)
    part.seconds = []
    outputs = []
    for i, argv in enumerate(part.commands):
        log_base = logs / f"{part.name}.{i}"
        status, seconds = run_command(argv, log_base, stop_at - time.perf_counter())
        part.seconds.append(seconds)
        outputs.append(Path(f"{log_base}.out").read_text(errors="replace"))
        elapsed = f"{time.perf_counter() - start:.0f} s"
        if status == "timeout":
            why = "its limit" if stop_at < deadline else "the suite's --budget"
            return [row(part, "timeout", part.about, elapsed, f"timeout: stopped at {why} ({part.limit} s "
                        f"part limit, command {i + 1} of {len(part.commands)}); log {log_base}.out")]
        if status != "ok" and part.name != "cuda-tests":  # pytest's own last line says what failed
            return [row(part, "failed", part.about, elapsed, f"error ({status}, command {i + 1} of "
                        f"{len(part.commands)}): {last_error(f'{log_base}.err')}")]
    try:
        rows = part.collect(part, outputs)
    except Exception as error:  # noqa: BLE001: any unreadable result is that part's error row
        return [row(part, "failed", part.about, f"{time.perf_counter() - start:.0f} s",
                    f"error reading its results: {type(error).__name__}: {error}")]
    if not rows:
        return [row(part, "failed", part.about, f"{time.perf_counter() - start:.0f} s",
                    f"error: no result rows in {logs / part.name}.*.out")]
    status = "ok" if status == "ok" else "failed"
    total = f"{time.perf_counter() - start:.0f} s in all"
    return [row(part, status, check, f"{seconds}; {total}" if seconds else total, result)
            for check, seconds, result in rows]


def row(part, status, check, seconds, result):
    return {"part": part.name, "status": status, "check": one_line(check), "time": one_line(seconds),
            "result": one_line(result)}


def markdown(rows):
    lines = ["| part | check | time | result |", "|---|---|---|---|"]
    return "\n".join(lines + [markdown_row(r) for r in rows])


def markdown_row(r):
    return "| " + " | ".join(r[k].replace("|", "/") for k in ("part", "check", "time", "result")) + " |"


def environment():
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "machine": machine_header()}
    try:
        import pyro

        info["pyro"] = pyro.__version__
    except Exception as error:  # noqa: BLE001: reported, the parts then fail one by one
        info["pyro"] = f"not importable ({one_line(error, 100)})"
    return info


# ------------------------------------------------------------------ command line

def parser():
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_suite.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the short parts (about 480 s on an H200; the default is "
                                                        "the full sizes, about 1,700 s in all)")
    p.add_argument("--dry-run", action="store_true", help="no GPU needed: build and parse every part's commands, "
                                                          "print the plan, run nothing")
    p.add_argument("--data-dir", help="MNIST folder (default shared/data/mnist in the checkout when it exists, "
                                      "else ../shared/data/mnist)")
    p.add_argument("--out", help="a new or empty run directory (default runs/gpu-suite-<timestamp>)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                   help="seconds for all parts: none starts with fewer than 30 left, the running one stops "
                        "when they run out; 0: no limit (default %(default)s)")
    p.add_argument("--parts", help="comma-separated parts to run, in the suite's order (default all)")
    p.add_argument("--skip-tests", action="store_true", help="leave out the cuda-tests part")
    p.add_argument("--epochs", type=int, help="fit-mnist's epochs (default: 2 with --quick, else 10)")
    p.add_argument("--points", type=int, help="the posterior part's test points (default: 200 with --quick, "
                                              "else 1000)")
    internal = p.add_argument_group("the posterior part's own process (the suite runs it)")
    internal.add_argument("--posterior", metavar="RUN_DIR", help="run NUTS and AIS on RUN_DIR and print the rows")
    internal.add_argument("--nuts-warmup", type=int, default=200)
    internal.add_argument("--nuts-samples", type=int, default=200)
    internal.add_argument("--ais-steps", type=int, default=500)
    internal.add_argument("--ais-chains", type=int, default=16)
    internal.add_argument("--device", default="cuda", help="the posterior part's device (default %(default)s)")
    return p


def fail(message, status=2):
    print(f"gpu_suite: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def default_data_dir():
    inside = ROOT / "shared" / "data" / "mnist"
    return inside if inside.exists() else ROOT.parent / "shared" / "data" / "mnist"


def data_problem(data_dir):
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    absent = [n for n in names if not any(Path(data_dir, n + ext).exists() for ext in ("", ".gz"))]
    return f"--data-dir {data_dir}: no MNIST files {', '.join(absent)}" if absent else None


def select(parts, args):
    names = [p.name for p in parts]
    chosen = args.parts.split(",") if args.parts else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        fail(f"--parts: no part {', '.join(unknown)} in this mode; parts: {', '.join(names)}")
    chosen = [n for n in chosen if not (args.skip_tests and n == "cuda-tests")]
    for part in parts:
        if part.name in chosen and part.needs and part.needs not in chosen:
            fail(f"--parts: {part.name} reads {part.needs}'s run; select both")
    return [p for p in parts if p.name in chosen]


def main(argv=None):
    args = parser().parse_args(argv)
    if args.posterior:
        return posterior_part(args)
    mode = "quick" if args.quick else "full"
    out = Path(args.out or f"runs/gpu-suite-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"--out {out}: already exists and is not empty; choose a new directory")
    data_dir = Path(args.data_dir).resolve() if args.data_dir else default_data_dir()
    if not args.dry_run and not torch.cuda.is_available():
        fail("no CUDA device (--dry-run checks the plan without one)", 1)
    problem = data_problem(data_dir)
    if problem and not args.dry_run:
        fail(problem)
    parts = select(build_parts(args, out, data_dir), args)
    info = environment()
    print(f"# gpu_suite, {mode} mode{', dry run' if args.dry_run else ''}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
          f"device: {info['device'] or 'no CUDA device'}; torch {info['torch']} (CUDA {info['cuda']}), "
          f"pyro {info['pyro']}, python {info['python']}\n{info['machine']}\nrun directory: {out}\ndata: {data_dir}\n"
          f"budget: {f'{args.budget:.0f} s' if args.budget else 'none'}; parts: {len(parts)}, "
          f"expected {sum(p.expected for p in parts)} s in all", flush=True)
    if args.dry_run:
        return dry_run(parts, problem)
    return run_suite(parts, args, out, mode, info)


def dry_run(parts, problem):
    bad = 1 if problem else 0
    if problem:
        print(f"data: error: {problem}")
    for part in parts:
        verdict = check_part(part)
        bad += verdict.startswith("error")
        print(f"\n## {part.name}: {part.about} (expected ~{part.expected} s, stopped at {part.limit} s)"
              f"{f'; after {part.needs}' if part.needs else ''}\n{verdict}")
        for argv in part.commands:
            print("  $ " + shlex.join(["python", *argv[1:]]))
    print(f"\n{len(parts)} parts, {bad} with errors", flush=True)
    return 1 if bad else 0


def run_suite(parts, args, out, mode, info):
    logs = out / "logs"
    logs.mkdir(parents=True)
    record = {"mode": mode, "started": time.strftime("%Y-%m-%d %H:%M:%S"), **info, "run_directory": str(out),
              "budget_s": args.budget, "finished": False, "rows": [],
              "parts": {p.name: {"commands": [shlex.join(c) for c in p.commands], "expected_s": p.expected,
                                 "limit_s": p.limit} for p in parts}}
    start = time.perf_counter()
    deadline = start + args.budget if args.budget else float("inf")
    status = {}
    previous = signal.signal(signal.SIGTERM, raise_stopped)
    print("\n| part | check | time | result |\n|---|---|---|---|", flush=True)
    try:
        for part in parts:
            left = deadline - time.perf_counter()
            reason = part.missing() if part.missing else None
            if reason:
                rows = [row(part, "not available", part.about, "", f"not available: {reason}")]
            elif part.needs and status.get(part.needs) != "ok":
                rows = [row(part, "skipped", part.about, "", f"skipped: {part.needs} did not finish")]
            elif left < MIN_START:
                rows = [row(part, "not run", part.about, "", f"not run: {max(left, 0):.0f} s of the budget left")]
            else:
                print(f"<!-- {part.name}: started at {time.perf_counter() - start:.0f} s, expected ~{part.expected}"
                      f" s, stopped after {min(part.limit, left):.0f} s at most -->", flush=True)
                rows = run_part(part, logs, deadline)
            status[part.name] = "ok" if all(r["status"] == "ok" for r in rows) else rows[0]["status"]
            record["rows"] += rows
            for r in rows:
                print(markdown_row(r), flush=True)
            write_summary(out, record)
        record["finished"] = True
    except (Stopped, KeyboardInterrupt):
        print("<!-- stopped by a signal -->", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    record["seconds"] = round(time.perf_counter() - start, 1)
    write_summary(out, record)
    print(f"\n## Summary\n\n{info['device'] or 'no CUDA device'}, torch {info['torch']}, pyro {info['pyro']}; {mode} mode, "
          f"{record['seconds']:.0f} s\n{info['machine']}\n\n{markdown(record['rows'])}\n\n"
          f"wrote {out}/summary.json and summary.md",
          flush=True)
    return 0 if record["finished"] and all(r["status"] in ("ok", "not available") for r in record["rows"]) else 1


def raise_stopped(signum, frame):
    raise Stopped()


def write_summary(out, record):
    (out / "summary.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "summary.md").write_text(f"{record['device'] or 'no CUDA device'}, torch {record['torch']}, pyro {record['pyro']}; "
                                    f"{record['mode']} mode\n\n{markdown(record['rows'])}\n")


if __name__ == "__main__":
    sys.exit(main())
