"""``seg benchmark``: structure and failure paths (never timings), exact FLOP counts, the CPU peak parser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from seg.runtime.errors import InputError
from seg.runtime.io import write_image
from seg.runtime.providers import cuda_problem
from seg.runtime.streams import MAX_AUTO_STREAMS
from seg.toolkit.bench.benchmark import CPU_FP16, merge_rounds, run_benchmark
from seg.toolkit.bench.flops import achieved, count_flops, cpu_peak
from seg.toolkit.bench.profile import compare_table, summarize
from seg.toolkit.bench.report import COLUMNS, BenchReport, BenchRow, add_ratios, int8_verdict, keras_ceiling
from seg.toolkit.cli import app

TILE = 32


def seg_model(path: Path) -> Path:
    """A 2-layer seg model ``image (N, H, W, 1) -> prob`` with seg metadata (32-pixel tiles, halo 8)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(2, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(1, 2, 1, 1)).astype(np.float32)
    shape = ["N", "H", "W", 1]
    nodes = [helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["c2"]),
             helper.make_node("Sigmoid", ["c2"], ["s"]),
             helper.make_node("Transpose", ["s"], ["prob"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, shape)],
                              [helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.ravel()),
                               helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    for key, value in {"seg.tile_size": str(TILE), "seg.halo": "8", "seg.size_multiple": "16"}.items():
        model.metadata_props.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.onnx`` plus a 5-slice labelled dataset of 32x32 images (seed layout)."""
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(1)
    for split in ("image", "label"):
        (root / "data" / "train" / split).mkdir(parents=True)
    for index in range(5):
        image = rng.integers(0, 256, (TILE, TILE), dtype=np.uint8)
        write_image(root / "data" / "train" / "image" / f"{index:02d}.png", image)
        label = np.where(image > 60, 255, 0).astype(np.uint8)
        write_image(root / "data" / "train" / "label" / f"{index:02d}.png", label)
    seg_model(root / "model.onnx")
    return root


@pytest.fixture(scope="module")
def report(bench_dir: Path):  # noqa: ANN201
    return run_benchmark(bench_dir / "model.onnx", data=bench_dir / "data", providers=("cpu", "cuda"),
                         variants=("fp32", "fp16", "int8"), batches=(1, 2), streams=(2, 1), images=2, repeats=1,
                         latency_runs=2, large=96, profile=False)


def test_rows_cover_every_configuration(report) -> None:  # noqa: ANN001
    keys = [(row.provider, row.variant, row.batch, row.streams_asked) for row in report.rows]
    assert keys[:6] == [("cpu", "fp32", 1, 1), ("cpu", "fp32", 1, 2), ("cpu", "fp32", 2, 1),
                        ("cpu", "fp32", 2, 2), ("cpu", "fp16", None, 1), ("cpu", "int8", None, 1)]
    fp32 = [row for row in report.rows if row.provider == "cpu" and row.variant == "fp32"]
    for row in fp32:
        assert row.ok and row.providers == ["cpu"]
        assert row.streams == row.streams_asked  # the count each row ran with
        assert row.compute_ips >= row.e2e_ips > 0 and row.peak_rss_mb > 10  # end-to-end includes the compute
        assert row.e2e_fraction == pytest.approx(row.e2e_ips / row.compute_ips)
        assert 0.0 <= row.membrane_f1 <= 1.0 and 0.0 <= row.v_rand <= 1.0
        assert row.vs_fp32_compute == pytest.approx(1.0)  # each against the FP32 row with its own streams
    assert fp32[0].p50_ms > 0 and fp32[0].p95_ms >= fp32[0].p50_ms and fp32[1].p50_ms is None
    assert fp32[0].membrane_f1 == fp32[1].membrane_f1  # one accuracy per variant


def test_cpu_fp16_and_missing_variant_rows_say_why(report) -> None:  # noqa: ANN001
    rows = {(row.provider, row.variant): row for row in report.rows}
    assert rows["cpu", "fp16"].status == CPU_FP16
    assert rows["cpu", "int8"].status == "not found: model.int8.onnx (export it with `seg export model.onnx --int8`)"


def test_unloadable_cuda_gives_one_row_with_the_reason(report) -> None:  # noqa: ANN001
    problem = cuda_problem()
    if problem is None:
        pytest.skip("CUDA loads on this machine")
    cuda = [row for row in report.rows if row.provider == "cuda"]
    assert len(cuda) == 1
    assert (cuda[0].variant, cuda[0].batch, cuda[0].ok) == ("all", None, False)
    assert "CUDA provider cannot load" in cuda[0].status and problem in cuda[0].status


def test_table_and_summary(report) -> None:  # noqa: ANN001
    lines = report.table().splitlines()
    assert lines[0] == "| " + " | ".join(title for _, title in COLUMNS) + " |"
    assert len(lines) == 2 + len(report.rows)
    assert all(line.count("|") == len(COLUMNS) + 1 for line in lines)
    summary = "\n".join(report.summary())
    assert f"GFLOP per {TILE}x{TILE} tile" in summary and "FMA units" in summary
    assert "large image: 96x96 uint8 tiled" in summary and "within the 1.5 GB budget" in summary
    assert report.large["peak_rss_mb"] >= report.large["rss_before_mb"] > 0
    assert report.sgemm_gflops and report.sgemm_gflops > 1  # measured, not assumed
    assert f"numpy's float32 matrix product reached {report.sgemm_gflops:.0f} GFLOP/s" in summary


def test_cli_writes_json_and_prints_the_table(bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["benchmark", "--model", str(bench_dir / "model.onnx"), "--data",
                                      str(bench_dir / "data"), "--providers", "cpu", "--variants", "fp32",
                                      "--batch", "2", "--images", "2", "--repeats", "1", "--latency-runs", "1",
                                      "--rounds", "2",
                                      "--large", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "| onnxruntime | cpu | fp32 | 2 |" in result.output
    data = json.loads(out.read_text())
    assert data["columns"] == [key for key, _ in COLUMNS]
    assert [row["status"] for row in data["rows"]] == ["ok"] and data["settings"]["rounds"] == 2
    assert 0.0 <= data["rows"][0]["v_rand"] <= 1.0  # scored once, kept through the merge
    assert data["machine"]["gflops"] > 0 and data["large"] is None
    assert data["flops_by_op"]["total"] == pytest.approx(2 * TILE * TILE * (2 * 9 + 2))


def test_cli_exits_1_when_nothing_could_be_measured(bench_dir: Path, tmp_path: Path) -> None:
    if cuda_problem() is None:
        pytest.skip("CUDA loads on this machine")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["benchmark", "--model", str(bench_dir / "model.onnx"), "--data",
                                      str(bench_dir / "data"), "--providers", "cuda", "--variants", "fp32",
                                      "--batch", "2", "--images", "2", "--repeats", "1", "--large", "0",
                                      "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert "CUDA provider cannot load" in result.output  # the table's status cell says why
    assert "error: nothing was measured: every configuration failed" in result.output
    assert [row["status"] for row in json.loads(out.read_text())["rows"]] != ["ok"]  # the report is still kept


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "missing.onnx"], "missing.onnx: no such model file; export one with `seg export missing.onnx`"),
    (["--variants", "fp64"], "unknown variant 'fp64'; choose from fp32, fp16, int8"),
    (["--providers", "tpu"], "unknown provider 'tpu'; choose from cpu, cuda"),
    (["--batch", "1,x"], "--batch '1,x': expected comma-separated integers, e.g. 1,4,8"),
    (["--batch", "0"], "batch sizes must be >= 1, got [0]"),
    (["--streams", "2,x"], "--streams '2,x': expected comma-separated integers and/or auto, e.g. 1,auto"),
    (["--streams", "0"], "--streams: each must be an int >= 1 or auto, got [0]"),
    (["--streams", "-1,2"], "--streams: each must be an int >= 1 or auto, got [-1, 2]"),
    (["--streams", ""], "--streams '': expected comma-separated integers and/or auto, e.g. 1,auto"),
    (["--keras", "nope.keras"], "nope.keras: no such .keras file"),
])
def test_bad_input_exits_2_with_one_line(bench_dir: Path, args: list[str], message: str) -> None:
    base = ["benchmark", "--model", str(bench_dir / "model.onnx")]
    result = CliRunner().invoke(app, [*base, *args])
    assert result.exit_code == 2
    assert message in result.output.replace("\n", "")


def flop_graph(size: int, group: int) -> bytes:
    """image (1, S, S, 1) -> Transpose -> Conv 3x3 (1->4) -> grouped Conv 3x3 (4->4) -> ConvTranspose 2x2/2
    (4->2) -> MatMul with (2S, 3)."""
    inits = [helper.make_tensor("w1", TensorProto.FLOAT, [4, 1, 3, 3], np.zeros(36, np.float32)),
             helper.make_tensor("wg", TensorProto.FLOAT, [4, 4 // group, 3, 3], np.zeros(36 * 4 // group, np.float32)),
             helper.make_tensor("wt", TensorProto.FLOAT, [4, 2, 2, 2], np.zeros(32, np.float32)),
             helper.make_tensor("b", TensorProto.FLOAT, [2 * size, 3], np.zeros(6 * size, np.float32))]
    nodes = [helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c", "wg"], ["g"], pads=[1, 1, 1, 1], group=group),
             helper.make_node("ConvTranspose", ["g", "wt"], ["u"], strides=[2, 2]),
             helper.make_node("MatMul", ["u", "b"], ["prob"])]
    graph = helper.make_graph(nodes, "flops", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["N", "H", "W", 1])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sgemm_ceiling_counts_a_real_product() -> None:
    from seg.toolkit.bench.flops import sgemm_gflops

    assert 0.1 < sgemm_gflops(size=256, runs=2) < 1e5


@pytest.mark.parametrize("size", [8, 16])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_flops_are_counted_exactly(size: int, group: int) -> None:
    pixels = size * size
    conv = 2 * pixels * 4 * (1 * 9) + 2 * pixels * 4 * (4 // group * 9)  # 2 x outputs x (C_in/group x k x k)
    transposed = 2 * (4 * pixels) * (2 * 2 * 2)  # 2 x inputs x (C_out x k x k)
    matmul = 2 * (2 * 2 * size * 3) * (2 * size)  # 2 x outputs (1, 2, 2S, 3) x K (2S)
    flops = count_flops(flop_graph(size, group), size)
    assert (flops["Conv"], flops["ConvTranspose"], flops["MatMul"]) == (conv, transposed, matmul)
    assert flops["total"] == conv + transposed + matmul


XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
cpu MHz\t\t: 2100.000
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512_vnni amx_int8

processor\t: 1
cpu MHz\t\t: 800.000
"""
EPYC = "model name\t: AMD EPYC 7B13 64-Core Processor\ncpu MHz\t\t: 2450.000\nflags\t\t: sse avx fma avx2\n"
OLD = "model name\t: Intel(R) Core(TM) i5-2500 CPU @ 3.30GHz\nflags\t\t: sse sse2 avx\n"


@pytest.mark.parametrize(("text", "cores", "isa", "lanes", "units", "ghz", "gflops", "int8"), [
    (XEON, 2, "AVX-512F", 16, 2, 2.1, 268.8, "AMX-INT8"),
    (EPYC, 2, "AVX2+FMA", 8, 2, 2.45, 156.8, "no VNNI"),
    (OLD, 4, "AVX (no FMA)", 8, 1, 3.3, 211.2, "no VNNI"),
])
def test_cpu_peak_from_cpuinfo_text(text: str, cores: int, isa: str, lanes: int, units: int, ghz: float,
                                    gflops: float, int8: str) -> None:
    peak = cpu_peak(text, cores=cores)
    assert (peak.isa, peak.lanes, peak.fma_units, peak.cores) == (isa, lanes, units, cores)
    assert peak.ghz == pytest.approx(ghz) and peak.gflops == pytest.approx(gflops)
    assert peak.int8_note.startswith(int8) and f"= {gflops:.0f} GFLOP/s" in peak.how


def test_cpu_peak_reads_the_clock_from_cpufreq_or_says_unknown(tmp_path: Path) -> None:
    no_clock = "model name\t: Some ARM core\nflags\t\t: fp asimd\n"
    unknown = cpu_peak(no_clock, cores=2, cpufreq=tmp_path / "absent")
    assert unknown.ghz is None and unknown.gflops is None and unknown.how.startswith("unknown: the machine reports no")
    assert achieved(10.0, 3.0, unknown) == (30.0, None)
    (tmp_path / "cpuinfo_max_freq").write_text("3000000\n")  # kHz
    assert cpu_peak(no_clock, cores=2, cpufreq=tmp_path).ghz == pytest.approx(3.0)
    (tmp_path / "base_frequency").write_text("2500000\n")  # the base clock wins over the turbo maximum
    peak = cpu_peak(no_clock, cores=2, cpufreq=tmp_path)
    assert peak.gflops == pytest.approx(2 * 4 * 1 * 2 * 2.5) and "(cpufreq base_frequency)" in peak.how


def test_profile_summary_drops_the_warm_up_run() -> None:
    def event(name: str, op: str, dur: int) -> dict:
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "args": {"op_name": op}}

    events = [event("a", "Conv", 9000), event("b", "Relu", 900), {"cat": "Session", "name": "x", "dur": 5},
              event("a", "Conv", 4000), event("b", "Relu", 400), event("a", "Conv", 6000), event("b", "Relu", 600)]
    profile = summarize(events, "m.onnx", batch=2, runs=2)
    assert profile.ms_by_op == {"Conv": pytest.approx(2.5), "Relu": pytest.approx(0.25)}
    assert profile.calls_by_op == {"Conv": 1, "Relu": 1}
    table = compare_table(profile, summarize(events[:2] + events[3:5], "q.onnx", 2, 1))
    assert table[2] == "| Conv | 2.5 | 2.0 |" and table[-1] == "| **total (kernels)** | 2.8 | 2.2 |"


def _row(engine: str, variant: str, batch: int, compute: float, e2e: float, f1: float = 0.8) -> BenchRow:
    return BenchRow(engine, "cpu", variant, batch, compute_ips=compute, e2e_ips=e2e, membrane_f1=f1, v_rand=0.9)


def test_profile_runs_through_a_segmenter_and_counts_every_run(bench_dir: Path) -> None:
    from seg.runtime import read_image
    from seg.toolkit.bench.profile import profile_ops

    image = read_image(next((bench_dir / "data" / "train" / "image").iterdir()))
    profile = profile_ops(bench_dir / "model.onnx", [image, image], runs=2, threads=1)
    assert profile.batch == 2 and profile.runs == 2 and "Conv" in profile.ms_by_op
    assert profile.calls_by_op["Conv"] >= 1 and profile.total_ms > 0


def test_ratios_and_int8_verdict() -> None:
    rows = [_row("onnxruntime", "fp32", 4, 10.0, 8.0), _row("onnxruntime", "int8", 4, 16.0, 10.0, f1=0.805),
            _row("keras", "fp32", 4, 2.0, 1.0), BenchRow("onnxruntime", "cuda", "all", None, "no GPU")]
    add_ratios(rows)
    assert rows[1].vs_fp32_compute == pytest.approx(1.6)
    assert (rows[0].e2e_fraction, rows[1].e2e_fraction) == (pytest.approx(0.8), pytest.approx(10.0 / 16.0))
    assert (rows[0].vs_keras_compute, rows[0].vs_keras_e2e) == (pytest.approx(5.0), pytest.approx(8.0))
    assert rows[2].vs_keras_compute is None and rows[3].vs_fp32_compute is None
    verdict = int8_verdict(rows)
    assert "1.60x (the table's best INT8 (batch 4) / best FP32 (batch 4))" in verdict
    assert verdict.endswith("|Δ membrane F1| 0.0050, |Δ V_rand| 0.0000: RECOMMENDED on this CPU")
    paired = {"ratio": 1.2, "batch": 4, "pairs": 7}  # the paired run outranks the table's ratio
    assert "1.20x (paired in one process at batch 4, median of 7" in int8_verdict(rows, paired)
    assert "below the 1.5x target" in int8_verdict(rows, paired)
    faster_fp32 = _row("onnxruntime", "fp32", 1, 20.0, 9.0)  # best against best, not batch by batch
    assert "0.80x" in int8_verdict([*rows, faster_fp32])
    assert "the paired run failed: timed out" in int8_verdict(rows, {"error": "timed out"})
    rows[1].compute_ips, rows[1].membrane_f1 = 9.0, 0.8
    add_ratios(rows)
    assert "0.90x" in int8_verdict(rows) and "NOT recommended on this CPU" in int8_verdict(rows)
    rows[1].compute_ips, rows[1].membrane_f1 = 20.0, 0.7
    add_ratios(rows)
    assert "NOT recommended" in int8_verdict(rows)


def test_keras_ceiling_is_peak_over_keras_rate() -> None:
    rows = [_row("onnxruntime", "fp32", 4, 10.0, 8.0), _row("keras", "fp32", 4, 5.0, 4.0)]
    rows[0].gflops, rows[1].gflops = 60.0, 30.0
    line = keras_ceiling(rows, 120.0)
    assert "Keras reached 30 GFLOP/s (25% of 120 GFLOP/s" in line
    assert "much more than 4.0x faster than Keras" in line and "onnxruntime FP32 reached 2.00x" in line
    assert keras_ceiling(rows[:1], 120.0) == ""  # no Keras row, no line


@pytest.mark.slow
def test_keras_rows_and_ratios(bench_dir: Path, tmp_path: Path) -> None:
    """A tiny Keras model through the Keras worker: its rows and the ORT/Keras ratios at the same batch."""
    import keras

    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs))
    model.save(tmp_path / "model.keras")
    report = run_benchmark(bench_dir / "model.onnx", keras=tmp_path / "model.keras", data=bench_dir / "data",
                           providers=("cpu",), variants=("fp32",), batches=(2,), images=2, repeats=1,
                           latency_runs=1, large=0, profile=False)
    onnx_row, keras_row = report.rows
    assert (keras_row.engine, keras_row.batch, keras_row.status, keras_row.providers) == ("keras", 2, "ok", ["keras"])
    assert keras_row.compute_ips > 0 and keras_row.e2e_ips > 0 and 0.0 <= keras_row.membrane_f1 <= 1.0
    assert onnx_row.vs_keras_compute == pytest.approx(onnx_row.compute_ips / keras_row.compute_ips)
    assert onnx_row.vs_keras_e2e == pytest.approx(onnx_row.e2e_ips / keras_row.e2e_ips)


def test_merge_rounds_takes_medians_and_keeps_failures() -> None:
    sweeps = [[_row("onnxruntime", "fp32", 1, c, e), BenchRow("onnxruntime", "cpu", "int8", 1, compute_ips=5.0)]
              for c, e in ((1.0, 4.0), (3.0, 2.0), (2.0, 9.0))]
    sweeps[1][1].status = "timed out after 900 s"
    for sweep, rss in zip(sweeps, (100.0, 300.0, 200.0), strict=True):
        sweep[0].peak_rss_mb = rss
    fp32, int8 = merge_rounds(sweeps)
    assert (fp32.compute_ips, fp32.e2e_ips, fp32.peak_rss_mb, fp32.membrane_f1) == (2.0, 4.0, 300.0, 0.8)
    assert int8.status == "timed out after 900 s"


def test_bench_images_from_each_kind_of_data(bench_dir: Path, tmp_path: Path) -> None:
    from seg.toolkit.bench.data import bench_images

    dataset = bench_images(bench_dir / "data", 7, tmp_path)
    assert len(dataset.timing) == 7 and dataset.timing[5] == dataset.timing[0]  # 5 slices, cycled
    assert len(dataset.labelled) == len(dataset.labels) == 1  # 20 % of 5 slices held out
    folder = bench_images(bench_dir / "data" / "train" / "image", 2, tmp_path)
    assert len(folder.timing) == 2 and folder.labelled == []
    synthetic = bench_images(None, 1, tmp_path)
    assert synthetic.timing[0].is_file() and synthetic.labels[0].shape == (512, 512)
    with pytest.raises(InputError, match="nowhere: no such folder; pass --data"):
        bench_images(tmp_path / "nowhere", 1, tmp_path)


def test_worker_peak_rss_is_its_own_not_the_parents() -> None:
    """A worker started from a big parent (as from a long pytest run) reports its own peak, not the parent's."""
    import subprocess
    import sys

    ballast = np.ones(400 * 2**20 // 8)  # 400 MB resident in this process
    ballast[::512] = 2.0
    code = "from seg.toolkit.bench.worker import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 300, out.stdout
    assert ballast.sum() > 0


def test_more_timed_images_than_files_still_measures(bench_dir: Path) -> None:
    """7 timed images from 5 files repeat two of them; the end-to-end pass must read each repeat, not crash."""
    report = run_benchmark(bench_dir / "model.onnx", data=bench_dir / "data", providers=("cpu",), variants=("fp32",),
                           batches=(2,), images=7, repeats=1, latency_runs=0, large=0, profile=False)
    (row,) = report.rows
    assert row.ok, row.status
    assert row.e2e_ips and row.e2e_ips > 0


def test_int8_speed_up_is_paired_in_one_process(bench_dir: Path, tmp_path: Path) -> None:
    """With FP32 and INT8 rows on the CPU, one worker alternates both; the verdict quotes that ratio."""
    import shutil

    model = tmp_path / "model.onnx"
    shutil.copy(bench_dir / "model.onnx", model)
    shutil.copy(bench_dir / "model.onnx", tmp_path / "model.int8.onnx")  # a stand-in: the same graph
    report = run_benchmark(model, data=bench_dir / "data", providers=("cpu",), variants=("fp32", "int8"),
                           batches=(1, 2), streams=(2,), images=2, repeats=1, latency_runs=0, large=0,
                           profile=False)
    paired = report.paired
    assert paired is not None and "error" not in paired, paired
    assert paired["batch"] in (1, 2) and paired["pairs"] == 7
    assert paired["streams"] == 2  # as the table's rows ran
    assert paired["fp32_ips"] > 0 and paired["other_ips"] > 0 and paired["ratio"] > 0
    assert (f"{paired['ratio']:.2f}x (paired in one process at batch {paired['batch']}, 2 streams"
            in report.int8_verdict)
    assert report.to_dict()["paired"] == paired


@pytest.mark.parametrize(("given", "expected"), [(1, 32), (5, 32), (32, 32), (40, 40)])
def test_end_to_end_folder_repeats_the_timed_images_to_at_least_32_files(given: int, expected: int) -> None:
    from seg.toolkit.bench.worker import E2E_FILES, folder_of

    paths = [f"{i}.png" for i in range(given)]
    files = folder_of(paths)
    assert E2E_FILES == 32 and len(files) == expected
    assert files[:given] == paths and all(f == paths[i % given] for i, f in enumerate(files))  # in order, cycled


@pytest.mark.parametrize(("cores", "asked", "cpu", "cuda"), [
    (2, (None,), [2], [2]), (1, (1, None), [1], [1, 2]), (3, (None, 1, 2, 2), [1, 2, 3], [1, 2]),
    (8, (None,), [MAX_AUTO_STREAMS], [2]),
])
def test_streams_to_measure_resolve_auto_per_provider_and_each_count_once(
        monkeypatch: pytest.MonkeyPatch, cores: int, asked: tuple[int | None, ...], cpu: list[int],
        cuda: list[int]) -> None:
    from seg.runtime import streams as streams_module
    from seg.toolkit.bench.benchmark import _check_streams, _configs

    monkeypatch.setattr(streams_module, "physical_cores", lambda: cores)
    streams = _check_streams(asked)
    assert _configs("cpu", [1, 4], streams) == [(b, s) for b in (1, 4) for s in cpu]
    assert _configs("cuda", [8], streams) == [(8, s) for s in cuda]  # auto on CUDA: CUDA_AUTO_STREAMS


@pytest.mark.parametrize("bad", [(), (0,), (2, -1)])
def test_bad_streams_to_measure_are_refused(bad: tuple[int, ...]) -> None:
    from seg.toolkit.bench.benchmark import _check_streams

    with pytest.raises(InputError, match="--streams"):
        _check_streams(bad)


def test_summary_says_when_end_to_end_beats_compute() -> None:
    report = BenchReport("m.onnx", cpu_peak(), 1.0, {}, [], [], {"tile": 512})
    report.rows = [_row("onnxruntime", "fp32", 1, 10.0, 8.0)]
    add_ratios(report.rows)
    assert not any("too short" in line for line in report.summary())
    report.rows[0].e2e_ips = 12.0
    add_ratios(report.rows)
    assert any("end-to-end above compute" in line and "--images 16" in line for line in report.summary())


def test_gflops_count_the_tiles_each_image_took(bench_dir: Path, tmp_path: Path) -> None:
    """72x72 images on a 32-pixel-tile model run as a grid of tiles: GFLOP/s counts every tile computed."""
    from seg.runtime import Segmenter

    rng = np.random.default_rng(2)
    (tmp_path / "big").mkdir()
    for index in range(2):
        write_image(tmp_path / "big" / f"{index}.png", rng.integers(0, 256, (72, 72), dtype=np.uint8))
    report = run_benchmark(bench_dir / "model.onnx", data=tmp_path / "big", providers=("cpu",), variants=("fp32",),
                           batches=(2,), images=2, repeats=1, latency_runs=0, large=0, profile=False)
    (row,) = report.rows
    segmenter = Segmenter(bench_dir / "model.onnx", provider="cpu", batch_size=2)
    segmenter.predict(rng.integers(0, 256, (72, 72), dtype=np.uint8))
    tile = segmenter.tile_for(72, 72)
    assert row.pixels_per_image == segmenter.stats.tiles * tile**2 > 72 * 72  # the tiles overlap
    flop_per_pixel = count_flops(bench_dir / "model.onnx", TILE)["total"] / TILE**2
    assert row.gflops == pytest.approx(flop_per_pixel * row.pixels_per_image / 1e9 * row.compute_ips)
    assert f"{row.pixels_per_image / TILE**2:.2f} x the {TILE}x{TILE} tile's pixels" in "\n".join(report.summary())


def test_a_provider_failing_after_measured_rows_keeps_them(bench_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second CUDA stream that cannot load fails its own configuration; the rows measured before it stay,
    and later configurations still get the variant's accuracy."""
    from seg.toolkit.bench import benchmark

    def measure(self, engine, path, provider, variant, batch, first, threshold, streams=1):  # noqa: ANN001, ANN202
        row = BenchRow("onnxruntime", provider, variant, batch, streams_asked=streams, compute_ips=10.0)
        if streams == 2:
            row.status = benchmark.PROVIDER_FAILED + "out of memory"
        elif first:
            row.membrane_f1, row.v_rand = 0.8, 0.9
        return row

    monkeypatch.setattr(benchmark._Runner, "measure", measure)
    runner = benchmark._Runner(bench_dir, None, 1, 0, None, 60.0, lambda _line: None)  # type: ignore[arg-type]
    rows = runner.onnx_rows(bench_dir / "model.onnx", "cuda", ["fp32"], [(1, 1), (1, 2), (2, 1)], False, 0.5)
    assert [(r.variant, r.batch, r.streams_asked, r.ok) for r in rows] == [
        ("fp32", 1, 1, True), ("fp32", 1, 2, False), ("fp32", 2, 1, True)]
    assert rows[1].status == "out of memory" and rows[2].membrane_f1 == 0.8
    failing = runner.onnx_rows(bench_dir / "model.onnx", "cuda", ["fp32"], [(1, 2), (2, 2)], False, 0.5)
    assert [(r.variant, r.batch, r.status) for r in failing] == [("all", None, "out of memory")]


def test_keras_worker_hides_gpus_before_importing_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keras rows are CPU rows: the worker must not let TensorFlow or JAX pick a GPU up."""
    from seg.toolkit.bench.worker import keras_on_cpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    keras_on_cpu()
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "-1" and os.environ["JAX_PLATFORMS"] == "cpu"


@pytest.mark.parametrize(("option", "kwargs"), [("--providers", {"providers": ()}), ("--variants", {"variants": ()})])
def test_nothing_to_measure_is_refused_up_front(bench_dir: Path, option: str, kwargs: dict) -> None:
    with pytest.raises(InputError, match=f"{option}: give at least one of"):
        run_benchmark(bench_dir / "model.onnx", data=bench_dir / "data", **kwargs)
