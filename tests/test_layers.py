"""Imports flow one way: entry scripts (the top-level scripts and benchmarks/), then the
packages, then utils/, then nets/; and no module imports itself back through others.
Every import counts, those inside functions included (ast, not a run)."""
import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_processing", "pde_self_supervised", "other_ssl", "few_shot",
            "growth_modeling", "pipeline")
LAYER_NAMES = ("nets", "utils", "packages", "entry scripts")


def layer(module):
    top = module.split(".")[0]
    if top == "nets":
        return 0
    if top == "utils":
        return 1
    if top in PACKAGES:
        return 2
    return 3


def project_files():
    """Every project .py file outside tests/, sorted; hidden folders and virtual
    environments (a folder holding pyvenv.cfg) are not walked."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"
                   and not (Path(folder) == ROOT and d == "tests")
                   and not (Path(folder, d) / "pyvenv.cfg").exists()]
        found += [Path(folder, f) for f in files if f.endswith(".py")]
    return sorted(found)


def project_imports():
    """{module: {imported project module}} over every project file outside tests/."""
    files = project_files()
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in files}
    tops = {m.split(".")[0] for m in modules}
    graph = {}
    for path in files:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # ``from utils import run`` imports the module utils.run.
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                         else node.module for a in node.names]
            else:
                continue
            found |= {n for n in names if n.split(".")[0] in tops and n in modules}
        graph[name] = found - {name}
    return graph


def test_no_import_runs_upward():
    upward = sorted(f"{m} ({LAYER_NAMES[layer(m)]}) imports {t} ({LAYER_NAMES[layer(t)]})"
                    for m, targets in project_imports().items() for t in targets
                    if layer(t) > layer(m))
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = project_imports()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_graph_sees_imports_inside_functions():
    # train.py imports the U-Net builder inside main(): the walk must find it.
    assert "nets.unet" in project_imports()["train"]
