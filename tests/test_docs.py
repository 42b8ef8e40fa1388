"""Docs that cannot drift: README.md and docs/*.md checked against the code.

Which command a flag is "written under" (``test_flags_exist``):

1. In a fenced block that is not Python, each command line (backslash
   continuations joined, ``# comments`` dropped) is cut at ``&&``, ``||``,
   ``;`` and a shell pipe `` | ``. In each piece a flag belongs to the nearest command
   before it: ``python -m pyro_vae.fit`` / ``.evaluate`` / ``.compare``
   (also ``-m pyro_vae.X`` after ``torchrun``), ``python benchmarks/NAME.py``,
   or ``torchrun`` itself (checked against torch's own torchrun parser).
   Pieces that run none of these (pip, pytest, cd) are not checked.
2. Outside fenced blocks, an inline code span that holds a command (as in 1)
   owns the flags inside it, by the same rule.
3. Every other flag on a line (prose, a table row, a heading) belongs to the
   commands that line names: a command span, or ``pyro_vae.fit``,
   ``pyro_vae.evaluate``, ``pyro_vae.compare`` or ``benchmarks/NAME.py``
   written anywhere on it; it must exist in one of them. A line that names
   none belongs to its page's command (``PAGE_COMMAND``: README.md and most
   pages are about fit, evaluation.md about evaluate, compare.md about
   compare); on a page without one (benchmarks.md, literature.md) the line
   must name its command.

Python blocks are not scanned for flags. The parsers are the commands' own
(``pyro_vae.fit.parser()`` and so on); a benchmark script's flags are read
from its source (every ``add_argument("--name", ...)`` call, by ``ast``,
without importing or running it: they build their parsers inside ``main``).

Defaults (``test_written_defaults_match_the_parsers``): ``python -m
pyro_vae.fit --help`` is the one source of a flag's meaning. A doc writes a
default only as `` `--flag` (default X) `` / `` `--flag N` (default X) ``, or
in a table with a column headed ``default`` whose row starts with the flag;
X is compared with the parser's default (or, where the parser's default is
None, with the ``(default X)`` its help text states).

Links (``test_links_resolve``): every relative link and image resolves to a
file, and an ``#anchor`` to a heading of the target page (GitHub's slugs).
Code spans naming a repository file (``pyro_vae/...py``, ``benchmarks/...``)
must name one that exists, and a dotted ``pyro_vae.module.name`` a module
that exists with ``name`` defined at its top level.

Runnable snippets (``test_runnable_snippet``): a ```` ```python ```` block on
the line right after ``<!-- runnable -->`` is executed in a fresh namespace
with a temporary directory as the working directory; the registries and
Pyro's parameter store are restored afterwards.

Also: README.md has at most 250 lines and its first two command lines are the
set-up command and the test command .ci/run runs; no page carries history
(``HISTORY`` phrases); every image has a ``python -m pyro_vae...`` or
``python benchmarks/...`` command within 6 lines of it.
"""

import argparse
import ast
import re
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250
PAGE_COMMAND = {
    "README.md": "fit", "fit.md": "fit", "inference.md": "fit", "nuts.md": "fit", "extending.md": "fit",
    "evaluation.md": "evaluate", "compare.md": "compare", "benchmarks.md": None, "literature.md": None,
    "mixture.md": "fit", "discrete.md": "fit", "calibration.md": "compare",
}
SETUP_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . "
                 "&& python -m pyro_vae.fit --guide amortized")
RUNNABLE = "<!-- runnable -->"
HISTORY = ("last round", "this round", "this session", "rounds ago", "predates", "re-run the same way",
           "old behaviour", "earlier figure", "earlier run")

FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
COMMAND = re.compile(r"(?:\bpython3?\s+)?-m\s+pyro_vae\.(fit|evaluate|compare)\b"
                     r"|(?:\bpython3?\s+)?(?<![\w/])(benchmarks/\w+\.py)\b"
                     r"|\b(torchrun)\b")
MENTION = re.compile(r"\bpyro_vae\.(fit|evaluate|compare)\b(?!\.)|(?<![\w/])(benchmarks/\w+\.py)\b")
SEPARATOR = re.compile(r"&&|\|\||;|\s\|\s")
CODE_SPAN = re.compile(r"`([^`]+)`")
DEFAULT_IN_TEXT = re.compile(r"`(--[\w-]+)(?:[ =][^`]*)?`\s*\(default:?\s+([^)]+)\)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)|<img\s[^>]*src=\"([^\"]+)\"")
REPO_PATH = re.compile(r"^(?:(?:pyro_vae|models|guides|benchmarks|tests|notebooks|docs)/[\w./-]*\w|\.ci/run)$")
DOTTED = re.compile(r"^(pyro_vae(?:\.\w+)+)")


# ---------------------------------------------------------------- reading pages

def page_id(path):
    return path.relative_to(REPO).as_posix()


def split_page(path):
    """(prose lines, fenced blocks) of a page: prose as (line number, text)
    with fenced blocks left out; blocks as (line number of the fence, info
    string, [(line number, text), ...])."""
    prose, blocks, block = [], [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*(```+|~~~+)\s*(.*)$", line)
        if block is None and fence:
            block = (number, fence.group(2).strip(), [], fence.group(1))
        elif block is not None and fence and fence.group(1).startswith(block[3]) and not fence.group(2):
            blocks.append(block[:3])
            block = None
        elif block is not None:
            block[2].append((number, line))
        else:
            prose.append((number, line))
    assert block is None, f"{page_id(path)}:{block[0]}: unclosed code fence"
    return prose, blocks


def is_python(info):
    return info.split()[0].lower() in ("python", "py", "pycon") if info else False


def command_lines(lines):
    """Join backslash continuations, drop comments: [(line number, text)]."""
    out, pending, start = [], "", None
    for number, line in lines:
        start = number if not pending else start
        text = re.sub(r"(^|\s)#.*$", "", line)
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        out.append((start, pending + text))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def command_name(match):
    return match.group(1) or match.group(2) or match.group(3)


def owned_flags(text):
    """[(command, flag)] for a command line or a command span (rule 1)."""
    owned = []
    for piece in SEPARATOR.split(text):
        marks = [(m.start(), command_name(m)) for m in COMMAND.finditer(piece)]
        for flag in FLAG.finditer(piece):
            before = [name for start, name in marks if start < flag.start()]
            if before:
                owned.append((before[-1], flag.group()))
    return owned


def flag_uses(path):
    """Every flag of a page with the command(s) it is written under:
    [(line number, flag, (command, ...), text)]."""
    uses = []
    prose, blocks = split_page(path)
    for _, info, lines in blocks:
        if is_python(info):
            continue
        for number, text in command_lines(lines):
            uses += [(number, flag, (command,), text) for command, flag in owned_flags(text)]
    for number, line in prose:
        for command, flag in line_flags(path, line):
            uses.append((number, flag, command, line))
    return uses


def line_commands(path, line):
    named = {command_name(m) for span in CODE_SPAN.findall(line) for m in COMMAND.finditer(span)}
    named |= {m.group(1) or m.group(2) for m in MENTION.finditer(line)}
    named.discard("torchrun")
    if named:
        return tuple(sorted(named))
    return (PAGE_COMMAND.get(path.name),)


def line_flags(path, line):
    """[(commands, flag)] for a prose line or table row (rules 2 and 3)."""
    found, rest = [], line
    for span in CODE_SPAN.findall(line):
        if COMMAND.search(span):
            found += [((command,), flag) for command, flag in owned_flags(span)]
            rest = rest.replace(f"`{span}`", " ", 1)
    commands = line_commands(path, line)
    found += [(commands, flag) for flag in FLAG.findall(rest)]
    return found


# ---------------------------------------------------------------- the parsers

class Script:
    """A benchmark script's options, read from its ``add_argument`` calls."""

    def __init__(self, path):
        self.options, self.defaults = {"-h", "--help"}, {}
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"):
                continue
            names = []
            for arg in node.args:
                assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), \
                    f"{path.name}:{node.lineno}: add_argument with a computed name; read its flags another way"
                names.append(arg.value)
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            for name in names:
                if name.startswith("-"):
                    self.options.add(name)
                    self.defaults[name] = default.value if isinstance(default, ast.Constant) else default
        assert len(self.options) > 2, f"{path.name}: no argparse options found"

    def default(self, flag):
        value = self.defaults[flag]
        assert not isinstance(value, ast.AST), f"default of {flag} is computed; write it in no doc"
        return value


class Parser:
    """A command's own argparse parser."""

    def __init__(self, parser):
        self.actions = {option: action for action in parser._actions for option in action.option_strings}
        self.options = set(self.actions)

    def default(self, flag):
        action = self.actions[flag]
        if action.default not in (None, argparse.SUPPRESS):
            value = action.default
            return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        stated = re.search(r"\(default:?\s+([^)]*)\)", action.help or "")
        return stated.group(1) if stated else None


_PARSERS = {}


def parser_for(command):
    if command not in _PARSERS:
        if command in ("fit", "evaluate", "compare"):
            module = __import__(f"pyro_vae.{command}", fromlist=["parser"])
            _PARSERS[command] = Parser(module.parser())
        elif command == "torchrun":
            from torch.distributed.run import get_args_parser
            _PARSERS[command] = Parser(get_args_parser())
        else:
            path = REPO / command
            assert path.is_file(), f"{command} does not exist"
            _PARSERS[command] = Script(path)
    return _PARSERS[command]


# ---------------------------------------------------------------- tests

def test_the_pages_exist():
    names = {path.name for path in PAGES}
    assert set(PAGE_COMMAND) <= names, f"missing pages: {sorted(set(PAGE_COMMAND) - names)}"
    assert names <= set(PAGE_COMMAND), f"pages without a PAGE_COMMAND entry: {sorted(names - set(PAGE_COMMAND))}"


def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"


def test_setup_commands_are_the_first_two_command_lines():
    """The first command line trains on the default; the second is what CI runs."""
    _, blocks = split_page(REPO / "README.md")
    lines = [text for _, info, block in blocks if not is_python(info) for _, text in block if text.strip()]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert lines[0] == SETUP_COMMAND
    assert lines[1] == ci[-1], "README.md's second command line must be the test command .ci/run runs"


def test_flags_exist():
    wrong = []
    for path in PAGES:
        for number, flag, commands, text in flag_uses(path):
            if commands == (None,):
                wrong.append(f"{page_id(path)}:{number}: {flag} is written under no command: {text.strip()}")
            elif not any(flag in parser_for(command).options for command in commands):
                wrong.append(f"{page_id(path)}:{number}: {flag} is not an option of {' or '.join(commands)}")
    assert not wrong, "\n".join(wrong)


def written_defaults(path):
    """[(line number, commands, flag, written default)] in a page's prose and tables."""
    found, header, prose = [], None, split_page(path)[0]
    for number, line in prose:
        for flag, value in DEFAULT_IN_TEXT.findall(line):
            found.append((number, line_commands(path, line), flag, value))
        if not line.lstrip().startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if header is None:
            header = [cell.strip("` ").lower() for cell in cells]
        elif "default" in header and not set("".join(cells)) <= set("-: "):
            flag = FLAG.search(cells[0])
            value = cells[header.index("default")].strip("` ")
            if flag and value:
                found.append((number, line_commands(path, line), flag.group(), value))
    return found


def same_value(written, actual):
    clean = [str(v).strip().strip("`'\"").strip().lower() for v in (written, actual)]
    if clean[0] == clean[1]:
        return True
    try:
        return float(clean[0]) == float(clean[1])
    except ValueError:
        return False


def test_written_defaults_match_the_parsers():
    wrong, checked = [], 0
    for path in PAGES:
        for number, commands, flag, value in written_defaults(path):
            checked += 1
            parsers = [parser_for(c) for c in commands if c and flag in parser_for(c).options]
            if not parsers:
                wrong.append(f"{page_id(path)}:{number}: {flag} (default {value}): no command here has {flag}")
            elif not any(same_value(value, p.default(flag)) for p in parsers):
                actual = " / ".join(str(p.default(flag)) for p in parsers)
                wrong.append(f"{page_id(path)}:{number}: {flag} written with default {value}, the parser's is {actual}")
    assert checked, "no written defaults found: the check is not reading the docs"
    assert not wrong, "\n".join(wrong)


def slug(heading):
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    for _, line in split_page(path)[0]:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            out.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return out


def test_links_resolve():
    wrong = []
    for path in PAGES:
        for number, line in split_page(path)[0]:
            for target in (a or b for a, b in LINK.findall(CODE_SPAN.sub(" ", line))):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                    continue
                file, _, anchor = target.partition("#")
                resolved = (path.parent / file).resolve() if file else path
                if not resolved.exists():
                    wrong.append(f"{page_id(path)}:{number}: {target} does not exist")
                elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    wrong.append(f"{page_id(path)}:{number}: {target}: no heading #{anchor}")
    assert not wrong, "\n".join(wrong)


def top_level_names(path):
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def module_file(parts):
    """The source of module ``parts`` (pyro_vae.models and .guides install from models/ and guides/)."""
    if len(parts) > 1 and parts[1] in ("models", "guides"):
        base, rest = REPO / parts[1], parts[2:]
    else:
        base, rest = REPO / "pyro_vae", parts[1:]
    for candidate in (base.joinpath(*rest).with_suffix(".py") if rest else None, base.joinpath(*rest, "__init__.py")):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def test_named_files_and_python_names_exist():
    wrong = []
    for path in PAGES:
        for number, line in split_page(path)[0]:
            for span in CODE_SPAN.findall(line):
                span = span.strip()
                if REPO_PATH.match(span) and not (REPO / span).exists():
                    wrong.append(f"{page_id(path)}:{number}: `{span}` does not exist")
                dotted = DOTTED.match(span)
                if not dotted:
                    continue
                parts = dotted.group(1).split(".")
                found = next(((i, module_file(parts[:i])) for i in range(len(parts), 0, -1) if module_file(parts[:i])),
                             (0, None))
                i, source = found
                if source is None:
                    wrong.append(f"{page_id(path)}:{number}: `{span}`: no such module")
                elif i < len(parts) and parts[i] not in top_level_names(source):
                    wrong.append(f"{page_id(path)}:{number}: `{span}`: {source.relative_to(REPO)} defines no "
                                 f"{parts[i]}")
    assert not wrong, "\n".join(wrong)


def test_no_history():
    wrong = [f"{page_id(path)}:{n}: {phrase!r}" for path in PAGES
             for n, line in enumerate(path.read_text().splitlines(), 1)
             for phrase in HISTORY if phrase in line.lower()]
    assert not wrong, "history belongs in git, not in the docs:\n" + "\n".join(wrong)


def test_every_figure_has_its_command_beside_it():
    wrong = []
    for path in PAGES:
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if re.search(r"!\[[^\]]*\]\(|<img\s", line):
                near = "\n".join(lines[max(0, index - 6): index + 7])
                if not re.search(r"python -m pyro_vae\.\w+|python benchmarks/\w+\.py", near):
                    wrong.append(f"{page_id(path)}:{index + 1}: a figure without its command within 6 lines")
    assert not wrong, "\n".join(wrong)


def runnable_snippets():
    """{(page, fence line): code} of every block marked runnable; the code is
    padded with blank lines so that a traceback's line numbers are the page's."""
    snippets = {}
    for path in PAGES:
        _, blocks = split_page(path)
        by_fence = {start: (info, lines) for start, info, lines in blocks}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() != RUNNABLE:
                continue
            info, lines = by_fence.get(number + 1, ("", None))
            assert lines and is_python(info), \
                f"{page_id(path)}:{number}: {RUNNABLE} must be followed by a ```python block on the next line"
            code = "\n" * (lines[0][0] - 1) + "\n".join(text for _, text in lines)
            snippets[page_id(path), number + 1] = code
    return snippets


SNIPPETS = runnable_snippets()


def test_there_are_runnable_snippets():
    assert any("fit(" in code for code in SNIPPETS.values()), "no runnable snippet trains a model"


@pytest.mark.parametrize("page, line", sorted(SNIPPETS), ids=[f"{p}:{n}" for p, n in sorted(SNIPPETS)])
def test_runnable_snippet(page, line, tmp_path, monkeypatch):
    from pyro_vae.plumbing import registry
    registry.model_names()  # the built-ins, so that a snippet's registrations can be undone
    saved = dict(registry.MODELS), dict(registry.GUIDES), torch.get_rng_state()
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(SNIPPETS[page, line], f"{page} (block at line {line})", "exec"), {"__name__": "__main__"})
    finally:
        registry.MODELS.clear(), registry.MODELS.update(saved[0])
        registry.GUIDES.clear(), registry.GUIDES.update(saved[1])
        torch.set_rng_state(saved[2])
        pyro.clear_param_store()
