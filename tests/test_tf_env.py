"""utils.tf_env: oneDNN on for every x86-64 CPU, set before TensorFlow loads."""
import ast
import subprocess
import sys
from tests.test_layers import ROOT, project_files
from utils.tf_env import ONEDNN_ENV, configure_tensorflow, onednn_state

# Module-level imports that load TensorFlow, directly or through the project's packages.
LOADS_TF = ("tensorflow", "keras", "nets", "utils", "pipeline", "pde_self_supervised",
            "other_ssl", "few_shot", "growth_modeling", "benchmarks")


def test_configure_turns_onednn_on_for_x86_64_only():
    env = {}
    configure_tensorflow(env, machine="x86_64")
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "2", ONEDNN_ENV: "1"}
    env = {}
    configure_tensorflow(env, machine="AMD64")             # Windows names it so
    assert env[ONEDNN_ENV] == "1"
    env = {}
    configure_tensorflow(env, machine="aarch64")           # TensorFlow's choice stands
    assert ONEDNN_ENV not in env


def test_configure_keeps_what_the_user_set():
    env = {ONEDNN_ENV: "0", "TF_CPP_MIN_LOG_LEVEL": "0"}
    configure_tensorflow(env, machine="x86_64")
    assert env == {ONEDNN_ENV: "0", "TF_CPP_MIN_LOG_LEVEL": "0"}


def test_onednn_state_names_tensorflows_default_and_the_setting():
    zen3, zen4 = ["avx2", "fma"], ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert onednn_state(zen3, environ={}, system="Linux") == (
        False, "TensorFlow's default for this CPU")
    assert onednn_state(zen4, environ={}, system="Linux")[0] is True
    assert onednn_state(zen4, environ={}, system="Windows")[0] is False
    on, why = onednn_state(zen3, environ={ONEDNN_ENV: "1"}, system="Linux")
    assert on and why == f"{ONEDNN_ENV}=1; TensorFlow's default here: off"
    assert onednn_state(zen4, environ={ONEDNN_ENV: "false"}, system="Linux")[0] is False


def _first_tf_import_and_configure(tree):
    """Indexes of the first module-level statement that may load TensorFlow and of
    the ``configure_tensorflow()`` call (None where absent)."""
    first = call = None
    for i, node in enumerate(tree.body):
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots = [] if node.module == "utils.tf_env" else [node.module.split(".")[0]]
        else:
            roots = []
            if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", "") == "configure_tensorflow"):
                call = i if call is None else call
        if first is None and any(r in LOADS_TF for r in roots):
            first = i
    return first, call


def test_every_entry_script_configures_tensorflow_before_loading_it():
    late = []
    for path in project_files():
        rel = path.relative_to(ROOT)
        text = path.read_text()
        if 'if __name__ == "__main__"' not in text:
            continue
        first, call = _first_tf_import_and_configure(ast.parse(text))
        if first is not None and (call is None or call > first):
            late.append(".".join(rel.with_suffix("").parts))
    # A script without the call passes only if importing it leaves TensorFlow unloaded.
    probe = ("import importlib, sys\n"
             f"for m in {late!r}:\n"
             "    importlib.import_module(m)\n"
             "    if 'tensorflow' in sys.modules: print(m); break\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not out.stdout.strip(), (f"{out.stdout.strip()} loads TensorFlow before "
                                    "configure_tensorflow() (or without it)")
