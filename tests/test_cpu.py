"""minnst.cpu: the CPU description read from /proc/cpuinfo, checked against the file itself."""
import os

import pytest

from minnst import cpu


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs Linux's /proc/cpuinfo")
def test_cpu_info_matches_proc_cpuinfo():
    text = open("/proc/cpuinfo").read().split("\n\n")[0]
    fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines()))
    info = cpu.cpu_info()
    assert info["vendor"] == fields.get("vendor_id", "")
    assert info["flags"] == frozenset(fields.get("flags", "").split())
    if "cpu family" in fields:
        assert info["family"] == int(fields["cpu family"])


def test_simd_and_flag_summary_name_the_widest_extension():
    def info(*flags):
        return {"vendor": "", "family": -1, "model": "", "flags": frozenset(flags)}

    assert cpu.simd(info("sse2", "avx", "avx2", "avx512f")) == "AVX-512"
    assert cpu.simd(info("sse2", "avx2")) == "AVX2"
    assert cpu.simd(info("sse2")) == "none known"
    assert cpu.flag_summary(info("avx2", "avx512f", "amx_tile", "sse2")) == "avx2 avx512f amx_tile"
    assert cpu.flag_summary(info("sse2")) == "-"


def test_is_zen5_by_vendor_and_family():
    assert cpu.is_zen5({"vendor": "AuthenticAMD", "family": 26, "model": "", "flags": frozenset()})
    assert not cpu.is_zen5({"vendor": "AuthenticAMD", "family": 25, "model": "", "flags": frozenset()})
    assert not cpu.is_zen5({"vendor": "GenuineIntel", "family": 26, "model": "", "flags": frozenset()})


def test_blas_kernels_names_a_forced_core_type(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert cpu.blas_kernels().endswith("(OPENBLAS_CORETYPE=Haswell)")
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert "OPENBLAS_CORETYPE" not in cpu.blas_kernels()


def test_blas_width_note_only_for_narrow_kernels_on_avx512():
    wide = {"vendor": "", "family": -1, "model": "", "flags": frozenset({"avx2", "avx512f"})}
    narrow = {"vendor": "", "family": -1, "model": "", "flags": frozenset({"avx2"})}
    note = cpu.blas_width_note(wide, "Haswell (OPENBLAS_CORETYPE=Haswell)")
    assert note and "Haswell (AVX2)" in note and "OPENBLAS_CORETYPE" in note
    assert "does not know" in cpu.blas_width_note(wide, "Zen")
    assert cpu.blas_width_note(wide, "SkylakeX") is None
    assert cpu.blas_width_note(narrow, "Haswell") is None


def test_isa_environment_sets_and_removes_the_libraries_variables():
    env = {"PATH": "/bin", "OPENBLAS_CORETYPE": "SkylakeX", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    avx2_cpu = {"flags": frozenset({"avx2", "fma"})}
    capped = cpu.isa_environment("avx2", env, avx2_cpu)
    assert capped == {"PATH": "/bin", "OPENBLAS_CORETYPE": "Haswell", "ONEDNN_MAX_CPU_ISA": "AVX2",
                      "ATEN_CPU_CAPABILITY": "avx2"}
    assert cpu.isa_in_effect("avx2", capped) and not cpu.isa_in_effect("native", capped)
    native = cpu.isa_environment("native", capped, avx2_cpu)
    assert native == {"PATH": "/bin"} and cpu.isa_in_effect("native", native)
    assert env["OPENBLAS_CORETYPE"] == "SkylakeX"  # the caller's mapping is not touched
    with pytest.raises(ValueError, match="no AVX2"):
        cpu.isa_environment("avx2", env, {"flags": frozenset({"sse2"})})
    with pytest.raises(ValueError, match="unknown vector width"):
        cpu.isa_environment("avx3", env, avx2_cpu)
