"""The benchmark runs end to end and writes the documented JSON keys."""
import json

import pytest

from minnst import bench


def test_vgg_benchmark_writes_json(tmp_path, vgg16_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["vgg", "--sizes", "32", "--repeat", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["matmul_gflops"] > 0 and data["machine"]["threads"] >= 1
    names = {r["workload"] for r in data["results"]}
    assert names == {"vgg16_forward", "vgg16_forward_backward"}
    for r in data["results"]:
        assert r["seconds"] > 0 and r["gflops"] > 0 and r["peak_mb"] > 0
        assert 0 < r["fraction_of_matmul"]
    assert "vgg16_forward_backward" in capsys.readouterr().out


def test_best_times_alternates_and_runs_short_work_longer(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    calls = []

    def work(name, seconds):
        def fn():
            calls.append(name)
            clock[0] += seconds.pop(0) if len(seconds) > 1 else seconds[0]
        return fn

    # a slow spell on the second timed round: it lands on both sides, and the best is kept
    a, b = work("a", [0.1, 0.2, 0.9, 0.15]), work("b", [0.1, 0.4, 1.2, 0.3])
    best = bench.best_times([a, b], repeat=3)
    assert calls[:2] == ["a", "b"]  # one warm-up each, then rounds of a, b
    assert calls[2:] == ["a", "b"] * ((len(calls) - 2) // 2)
    rounds = (len(calls) - 2) // 2
    # a, the quicker, has run 1.1 + 0.15·(rounds − 2) s: ≥ 1.5 after 5 rounds, past the 3 asked for
    assert rounds == 5 and best == [pytest.approx(0.15), pytest.approx(0.3)]
    calls.clear()
    assert bench.best_time(work("c", [2.0]), repeat=2) == pytest.approx(2.0)
    assert len(calls) == 1 + 2  # long work: just the runs asked for
    calls.clear()
    bench.best_time(work("d", [1e-4]), repeat=1)
    assert len(calls) == 1 + bench.MAX_RUNS  # tiny work stops at MAX_RUNS


def test_json_without_a_file_name_and_the_conv_alias(tmp_path, vgg16_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `--json` alone writes ./bench.json
    assert bench.main(["conv", "vgg", "--sizes", "32", "--repeat", "1", "--json"]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert sorted(r["workload"] for r in rows) == ["vgg16_forward", "vgg16_forward_backward"]


def test_torch_twins_agree_and_report_ratios(tmp_path, vgg16_path):
    pytest.importorskip("torch")
    out = tmp_path / "b.json"
    assert bench.main(["vgg", "gatys", "--sizes", "32", "--repeat", "1", "--compare-torch",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    compared = [r for r in rows if "torch_seconds" in r]
    assert {r["workload"] for r in compared} == {"vgg16_forward", "vgg16_forward_backward",
                                                 "gatys_loss_and_grad"}
    for r in compared:
        assert r["ratio_vs_torch"] == pytest.approx(r["seconds"] / r["torch_seconds"])


def test_bad_arguments_exit_2(capsys):
    assert bench.main(["warp"]) == 2
    capsys.readouterr()
    assert bench.main(["--sizes", "abc"]) == 2  # argparse's error: one line
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_gatys_tiled_rows(vgg16_path):
    """bench gatys-tiled: an untiled and a tiled evaluation at a size that needs 4 tiles,
    with the tile count and the overhead ratio."""
    rows = bench.bench_gatys_tiled([64], 1, tile=32)
    assert [r["workload"] for r in rows] == ["gatys_eval_untiled", "gatys_eval_tiled_32"]
    tiled = rows[1]
    assert tiled["tiles"] == 4 and tiled["overhead_vs_untiled"] == tiled["seconds"] / rows[0]["seconds"]
    assert all(r["seconds"] > 0 and r["peak_mb"] > 0 for r in rows)


def test_flop_counts_against_the_layer_formulas():
    """The transformer's convolution FLOPs, counted by hand layer by layer (Johnson's
    network, nearest upsampling), and the ideal F(4×4, 3×3) count: a quarter of the 3×3
    stride-1 layers' (the residual blocks and the two convolutions after the resizes)."""
    from minnst.transformer import TransformerConfig, TransformerNet

    H, W, N = 64, 48, 2
    P = H * W
    strided = 2 * 9 * 32 * 64 * P / 4 + 2 * 9 * 64 * 128 * P / 16
    nine = 2 * 81 * 3 * 32 * P + 2 * 81 * 32 * 3 * P
    three = 10 * 2 * 9 * 128 * 128 * P / 16 + 2 * 9 * 128 * 64 * P / 4 + 2 * 9 * 64 * 32 * P
    direct, ideal = bench.transformer_conv_flops(TransformerNet(TransformerConfig(width=1.0)), N, H, W)
    assert direct == N * (strided + nine + three)
    assert ideal == N * (strided + nine + three / 4)


def test_rows_report_the_winograd_limit(tmp_path, vgg16_path):
    out = tmp_path / "b.json"
    assert bench.main(["vgg", "--sizes", "32", "--repeat", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    for r in doc["results"]:
        assert r["winograd4_ideal_gflop"] == pytest.approx(r["gflops"] * r["seconds"] / 4)
        assert r["winograd4_limit_seconds"] == pytest.approx(r["winograd4_ideal_gflop"] / doc["matmul_gflops"])
        assert r["times_winograd4_limit"] == pytest.approx(r["seconds"] / r["winograd4_limit_seconds"])


def test_isa_reruns_the_benchmark_with_every_library_capped(tmp_path, vgg16_path, monkeypatch):
    """--isa avx2 from an environment without the caps: the child process it starts loads
    OpenBLAS on its Haswell kernels (and PyTorch at AVX2, when installed) and says so."""
    import importlib.util

    from minnst import cpu

    if "avx2" not in cpu.cpu_info()["flags"] or cpu.blas_architecture() == "unknown":
        pytest.skip("needs an AVX2 CPU and OpenBLAS")
    for key in cpu.ISA_ENVIRONMENT["avx2"]:
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "b.json"
    with_torch = importlib.util.find_spec("torch") is not None
    argv = ["vgg", "--sizes", "32", "--repeat", "1", "--isa", "avx2", "--json", str(out)]
    assert bench.main(argv + (["--compare-torch"] if with_torch else [])) == 0
    machine = json.loads(out.read_text())["machine"]
    assert machine["isa"] == "avx2"
    assert machine["blas_kernels"] == "Haswell (OPENBLAS_CORETYPE=Haswell)"
    if with_torch:
        assert machine["torch_capability"] == "AVX2"
