"""--precision auto on the CPU: bf16-mixed only with AMX bf16 units AND a probe that finds bf16 faster."""
import logging

import pytest

from mmfm.train import precision, resolve_accelerator

AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile amx_int8\n"
AMD_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """cpu(cpuinfo_text, speedup) -> probe calls: the flags file and the probe's bf16 speedup this test sees."""
    probes = []

    def set_cpu(text: str, speedup: float):
        info = tmp_path / "cpuinfo"
        info.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO", str(info))
        monkeypatch.setattr(precision, "bf16_speedup", lambda: probes.append(1) or speedup)
        precision.auto_cpu_precision.cache_clear()
        return probes

    yield set_cpu
    precision.auto_cpu_precision.cache_clear()


def test_amx_and_a_fast_probe_pick_bf16_mixed(cpu, caplog):
    probes = cpu(AMX_CPUINFO, 5.6)
    with caplog.at_level(logging.INFO, logger="mmfm.train.precision"):
        assert resolve_accelerator("cpu") == ("cpu", "bf16-mixed")
    assert probes == [1] and "probe 5.6x" in caplog.text
    assert resolve_accelerator("auto") == ("cpu", "bf16-mixed") and probes == [1]  # decided once per process


def test_amx_with_a_slow_probe_stays_fp32(cpu):
    cpu(AMX_CPUINFO, 1.1)
    assert resolve_accelerator("cpu") == ("cpu", "32-true")


def test_no_amx_stays_fp32_without_probing(cpu):
    probes = cpu(AMD_CPUINFO, 9.0)  # avx512_bf16 alone is not the matrix units
    assert resolve_accelerator("cpu") == ("cpu", "32-true") and probes == []


def test_an_explicit_precision_is_never_overridden(cpu):
    probes = cpu(AMX_CPUINFO, 5.0)
    assert resolve_accelerator("cpu", "32") == ("cpu", "32-true") and probes == []


def test_cpu_flags_parsing(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(AMX_CPUINFO)
    assert {"amx_bf16", "avx512f"} <= precision.cpu_flags(info)
    assert precision.cpu_flags(tmp_path / "missing") == set()


def test_probe_measures_a_positive_ratio():
    assert precision.bf16_speedup() > 0
