"""Every benchmark script runs its smallest setting (one step, 32x32), so none rots
unnoticed when the code it times changes; the scripts that other tests already run end
to end are named with the test that does."""
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALLEST = {
    "bench_make_dataset": ["--sizes", "200", "--per-class", "5"],    # two views
    "bench_pair_pipeline": ["--images", "4", "--batch-size", "2", "--batches", "1",
                            "--repeats", "1"],
    "bench_synthetic_orchard": ["--image-size", "32", "32", "--cameras", "1", "--presets", "1",
                                "--times", "12", "--workers", "1"],
    "bench_pde_step": ["--input-shape", "32", "32", "--batch-size", "2", "--steps", "1",
                       "--warmup", "1", "--pool", "gap", "--shared-towers", "--precision",
                       "float32", "--peak-gflops", "100"],
    "bench_unet_step": ["--input-shape", "32", "32", "--batch-size", "2", "--steps", "1",
                        "--warmup", "1", "--modes", "frozen", "--precision", "float32",
                        "--peak-gflops", "100"],
    "few_shot_table": ["--orchard", "2", "64", "96", "--rows", "random=transfer", "--shots", "2",
                       "--seeds", "11", "--input-shape", "32", "32", "--epochs", "1", "1",
                       "--few-shot-args", "--no-plots --classifier-epochs 1 --run-eagerly",
                       "--logs-dir", "logs"],
    "profile_step": ["pde", "--input-shape", "32", "32", "--batch-size", "2", "--steps", "1",
                     "--warmup", "1", "--freeze-stages", "conv1", "res2"],
}
# Run end to end elsewhere: script -> the test file that runs its main().
ELSEWHERE = {
    "colour_baseline": "test_synthetic_orchard.py",
    "pixel_probe": "test_get_miou.py",
    "paper_table": "test_run_pipeline.py",
    "pde_vs_random": "test_run_pipeline.py",
    "label_efficiency": "test_label_efficiency.py",
}
NOT_SCRIPTS = {"__init__", "timing"}


def test_every_benchmark_script_is_run_by_a_test():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - NOT_SCRIPTS
    assert scripts == set(SMALLEST) | set(ELSEWHERE)
    for script, test_file in ELSEWHERE.items():
        assert f"{script}.main(" in (ROOT / "tests" / test_file).read_text(), (script, test_file)


@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_its_smallest_setting(script, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"benchmarks.{script}")
    module.main(SMALLEST[script])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("Machine: ") and "cores" in first
    assert "; oneDNN on (" in first or "; oneDNN off (" in first


def test_xla_choices_and_their_ratio_lines():
    from benchmarks.timing import jit_compile, xla_ratios

    assert jit_compile("on") is True and jit_compile("off") is False
    results = {"frozen/float32/fused": {"s": 3.0}, "frozen/float32/fused/xla-on": {"s": 2.0},
               "frozen/bfloat16/fused/xla-off": {"s": 1.0},
               "frozen/bfloat16/fused/xla-on": {"s": 2.0}}
    assert xla_ratios(results) == ["  XLA on / default, frozen/float32/fused: 1.50x",
                                   "  XLA on / off, frozen/bfloat16/fused: 0.50x"]
