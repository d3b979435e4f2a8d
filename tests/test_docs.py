"""The front door cannot rot: every script README.md and docs/ name answers ``--help``,
and every option they quote for it is one its parser knows."""
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

from tests.test_layers import project_files

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "benchmarks" / "README.md"]
COMMAND = re.compile(r"\bpython3? (?!-)(\S+\.py)\b(.*)")
OPTION = re.compile(r"^\[?(--[a-z][a-z0-9-]*)")


def all_scripts():
    """Every script with a command line: a parse_args and a __main__ block."""
    found = []
    for path in project_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if "def parse_args" in text and '__name__ == "__main__"' in text:
            found.append(rel)
    return found


def _command_lines(text):
    """Command lines of fenced blocks (continuations joined) and of inline code spans."""
    lines, fenced, current = [], False, ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            current += raw.rstrip().removesuffix("\\") + " "
            if not raw.rstrip().endswith("\\"):
                lines.append(current)
                current = ""
        else:
            lines += re.findall(r"`([^`]*\bpython3? [^`]*)`", raw)
    return lines


def _docstring_lines(path):
    """Command lines in a script's module docstring (its usage examples)."""
    import ast

    text = ast.get_docstring(ast.parse(path.read_text())) or ""
    lines, current = [], ""
    for raw in text.splitlines():
        if current or re.match(r"\s*python3? ", raw):
            current += raw.strip().removesuffix("\\") + " "
            if not raw.rstrip().endswith("\\"):
                lines.append(current)
                current = ""
    return lines


def quoted_commands():
    """{script path: {options quoted for it}} over the README, the docs and the usage
    examples in the scripts' docstrings."""
    found = {}
    sources = [(doc.name, _command_lines(doc.read_text())) for doc in DOCS]
    sources += [(script, _docstring_lines(ROOT / script)) for script in all_scripts()]
    for name, lines in sources:
        for line in lines:
            for part in re.split(r"&&|;|\|", line):
                match = COMMAND.search(part)
                if not match:
                    continue
                script = match.group(1)
                try:
                    tokens = shlex.split(match.group(2), comments=True)
                except ValueError:                 # an unclosed quote in prose
                    tokens = match.group(2).split()
                options = found.setdefault(script, {})
                for token in tokens:
                    # Options inside a quoted --<step>-args value belong to another script.
                    option = OPTION.match(token.split("=")[0] if "=" in token else token)
                    if option and " " not in token:
                        options.setdefault(option.group(1), name)
    return found


def help_text(script):
    """``--help`` of ``script`` (and of each of its subcommands), run in-process."""
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))

    def run(argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            module.parse_args(argv)
        return out.getvalue()

    text = run(["--help"])
    subcommands = re.search(r"^usage: \S+ (?:\[-h\] )?\{([a-z_,-]+)\}", text, re.M)
    for sub in subcommands.group(1).split(",") if subcommands else []:
        text += run([sub, "--help"])
    return text


def test_docs_quote_scripts_and_options():
    found = quoted_commands()
    assert {"run_pipeline.py", "train.py"} <= set(found)


@pytest.mark.parametrize("script", sorted(quoted_commands()))
def test_every_quoted_option_exists(script):
    assert (ROOT / script).is_file(), f"the docs name {script}, which does not exist"
    text = help_text(script)
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", text))
    missing = {o: doc for o, doc in quoted_commands()[script].items()
               if o not in known and o != "--help"}
    assert not missing, f"{script}: options quoted in the docs but not in its parser: {missing}"


STEP_SCRIPTS = {"select": "data_processing/select_img.py", "pairs": "data_processing/make_dataset.py",
                "pretrain": "pde_self_supervised/con_train_resnet_class.py", "unet": "train.py",
                "growth": "growth_modeling/unet_gm.py"}


def test_step_args_examples_name_options_of_that_step():
    """run_pipeline's --<step>-args help gives an example flag; the step's script has it."""
    text = " ".join(help_text("run_pipeline.py").split())
    for step, script in STEP_SCRIPTS.items():
        example = re.search(rf"--{step}-args=(--[a-z-]+)", text)
        assert example, f"no example in --{step}-args's help"
        assert re.search(rf"{example.group(1)}\b", help_text(script)), (step, example.group(1))


# One name per concept across scripts; an older spelling stays only as an alias of it.
SHARED_NAMES = {"--voc": "--voc-path", "--dir-save-path": "--out-dir", "--out": "--out-dir",
                "--log-dir": "--logs-dir", "--random-seed": "--seed", "--weights": "--model-path"}


@pytest.mark.parametrize("script", all_scripts())
def test_shared_concepts_use_shared_names(script):
    options = set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text(script)))
    wrong = {old: new for old, new in SHARED_NAMES.items() if old in options and new not in options}
    assert not wrong, f"{script}: give these options their shared name (old one as an alias): {wrong}"
    # --seeds is a list of seeds everywhere, never a count.
    if "--seeds" in options:
        assert re.search(r"--seeds (\S+) \[\1 \.\.\.\]", help_text(script)), script


def _anchors(markdown):
    """GitHub's anchors of a page's headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, re.M)}


@pytest.mark.parametrize("doc", DOCS + [ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_every_link_reaches_a_file_and_heading(doc):
    broken = []
    for target, anchor in re.findall(r"\]\((?!https?:)([^)#\s]*)(?:#([^)\s]+))?\)", doc.read_text()):
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path.read_text()):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{doc.name}: broken links {broken}"
