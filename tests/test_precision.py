"""``--precision auto`` decides from the machine's facts; these tests fake them, so the
decision is checked the same way on every CPU."""
import json

import pytest

from utils import precision
from utils.precision import MIN_SPEEDUP, decide, native_bf16, probe_sizes


def _probe(speedup):
    calls = []

    def run():
        calls.append(1)
        return {"ms": {"conv": {"float32": 10.0, "bfloat16": 10.0 / speedup}}, "speedup": speedup}
    return run, calls


def test_auto_picks_bfloat16_only_where_native_and_faster():
    run, calls = _probe(1.6)
    assert decide("auto", native=True, run_probe=run)[0] == "bfloat16"
    run, _ = _probe(MIN_SPEEDUP - 0.01)
    assert decide("auto", native=True, run_probe=run)[0] == "float32"
    run, _ = _probe(0.12)       # an emulated bfloat16, as on an AVX2-only CPU
    assert decide("auto", native=True, run_probe=run)[0] == "float32"
    # Not native: float32 without spending the probe's seconds.
    run, calls = _probe(3.0)
    precision, reason, measured = decide("auto", native=False, run_probe=run)
    assert (precision, measured, calls) == ("float32", None, [])
    assert "no native bfloat16" in reason


def test_auto_on_a_gpu_follows_tensor_cores():
    run, calls = _probe(3.0)
    assert decide("auto", gpu_cc=(8, 0), native=True, run_probe=run)[0] == "float16"
    assert decide("auto", gpu_cc=(7, 0), run_probe=run)[0] == "float16"
    assert decide("auto", gpu_cc=(6, 1), native=True, run_probe=run)[0] == "float32"
    assert calls == []


def test_explicit_precision_is_kept():
    run, calls = _probe(0.1)
    for name in ("float32", "bfloat16", "float16"):
        assert decide(name, native=False, run_probe=run)[0] == name
    assert calls == []


def test_native_bf16_reads_flags_and_the_onednn_cap():
    zen4 = ["avx2", "avx512f", "avx512_bf16"]
    assert native_bf16(zen4, onednn_isa="")
    assert native_bf16(["amx_bf16", "amx_tile"], onednn_isa="")
    assert native_bf16(["fp", "asimd", "bf16"], onednn_isa="")        # ARM
    assert not native_bf16(["avx2", "fma"], onednn_isa="")            # Zen 3
    assert not native_bf16(zen4, onednn_isa="AVX2")
    assert not native_bf16(zen4, onednn_isa="avx512_core")
    assert native_bf16(zen4, onednn_isa="AVX512_CORE_BF16")


def test_probe_sizes_follow_the_run_within_bounds():
    small, large = probe_sizes((32, 64), 32), probe_sizes((576, 1024), 72)
    assert small["conv"] == (16, 8, 16, 64)
    assert large["conv"][0] == 16 and large["conv"][1:3] == (48, 64)
    assert small["matmul"][0] <= large["matmul"][0] <= 2048


def _fake_bf16_cpu(monkeypatch, cache_dir, onednn):
    """A CPU with AVX512_BF16, no GPU, no oneDNN cap, oneDNN ``onednn`` ("1"/"0")."""
    monkeypatch.setenv(precision.CACHE_ENV, str(cache_dir))
    monkeypatch.setattr(precision, "_decided", {})
    monkeypatch.setattr(precision, "gpu_compute_capability", lambda: None)
    monkeypatch.setattr(precision, "cpu_info",
                        lambda: {"model": "Fake CPU", "flags": ["avx512_bf16"]})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)


def test_resolve_records_and_caches_the_probe(tmp_path, monkeypatch):
    _fake_bf16_cpu(monkeypatch, tmp_path, onednn="1")
    measured = []

    def fake_probe(sizes, budget_s=2.0):
        measured.append(sizes)
        return {"ms": {"conv": {"float32": 2.0, "bfloat16": 1.0}}, "rounds": 3, "speedup": 2.0}

    monkeypatch.setattr(precision, "probe", fake_probe)
    record = precision.resolve_precision("auto", (64, 128), 8, quiet=True)
    assert record["precision"] == "bfloat16" and record["policy"] == "mixed_bfloat16"
    assert record["cpu"] == "Fake CPU" and record["probe"]["cached"] is False
    cache = json.loads((tmp_path / precision.CACHE_FILE).read_text())
    assert len(cache) == 1 and next(iter(cache)).startswith("Fake CPU|")
    # A second process reads the cache instead of probing again.
    monkeypatch.setattr(precision, "_decided", {})
    again = precision.resolve_precision("auto", (64, 128), 8, quiet=True)
    assert again["probe"]["cached"] is True and len(measured) == 1
    assert "bfloat16" in precision.describe(again)


def test_auto_takes_float32_without_probing_where_onednn_is_off(tmp_path, monkeypatch):
    # TF_ENABLE_ONEDNN_OPTS=0: TensorFlow's bfloat16 kernels are Eigen's, not native.
    _fake_bf16_cpu(monkeypatch, tmp_path, onednn="0")
    monkeypatch.setattr(precision, "probe", lambda *a, **k: pytest.fail("probed"))
    record = precision.resolve_precision("auto", (64, 128), 8, quiet=True)
    assert record["precision"] == "float32" and record["onednn"] is False
    assert "oneDNN off (TF_ENABLE_ONEDNN_OPTS=0" in record["reason"]
    assert "oneDNN off" in precision.describe(record)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="choose from auto"):
        precision.resolve_precision("half")
