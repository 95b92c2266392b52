"""`pdseg benchmark` and its engine, and `benchmarks/latency.py --reference`, on pdseg-tiny at 64 px."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import typer
from helpers import REPO, benchmark_script, tiny_checkpoint
from typer.testing import CliRunner

from pdseg_cli.commands.benchmark import benchmark
from pdseg_cli.engine.benchmark import BenchmarkReport, BenchmarkRow, _rss_peak, run_benchmark
from pdseg_cli.errors import InputError
from pdseg_cli.model import create_model

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The command on a one-command app, as cli.py registers it (`app.command("benchmark")`)."""
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as in cli.py: the subcommand is named on the line
    app.command("benchmark")(benchmark)
    return app


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt")


def test_engine_compare_rows() -> None:
    report = run_benchmark("pdseg-tiny", [64, 96], device="cpu", runs=2, mode="compare", threads=1)
    assert isinstance(report, BenchmarkReport)
    assert report.variant == "pdseg-tiny" and report.device == "cpu" and report.precision == "fp32"
    assert report.threads == 1
    assert [(r.size, r.path) for r in report.rows] == [
        (64, "plain"),
        (64, "optimized"),
        (96, "plain"),
        (96, "optimized"),
    ]
    for r in report.rows:
        assert len(r.times_ms) == 2 and all(t > 0 for t in r.times_ms)
        assert r.min_ms <= r.median_ms
        assert r.images_per_s == pytest.approx(1000.0 * r.batch / r.median_ms)
        if sys.platform.startswith("linux"):
            assert r.peak_bytes is not None and r.peak_bytes >= 0
        if r.path == "optimized":
            assert r.speedup is not None and r.speedup > 0
            assert r.max_abs_diff is not None and r.max_abs_diff <= 1e-4
        else:
            assert r.speedup is None and r.max_abs_diff is None
    assert torch.get_num_threads() == 1  # restored (the fixture's value)


def test_engine_batch_and_single_path() -> None:
    report = run_benchmark("pdseg-tiny", [64], batch=2, device="cpu", runs=1, mode="plain")
    (row,) = report.rows
    assert row.path == "plain" and row.batch == 2 and row.speedup is None


def test_engine_weights(checkpoint: Path) -> None:
    report = run_benchmark(None, [64], device="cpu", runs=1, weights=checkpoint)
    assert report.variant == "pdseg-tiny" and report.weights == str(checkpoint)
    # the default variant takes the checkpoint's too: it was pdseg-b, which refused every other one
    assert run_benchmark(sizes=[64], device="cpu", runs=1, weights=checkpoint).variant == "pdseg-tiny"
    with pytest.raises(InputError, match="does not match"):
        run_benchmark("pdseg-t", [64], device="cpu", runs=1, weights=checkpoint)


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "fastest"}, {"sizes": [16]}, {"sizes": []}, {"runs": 0}, {"warmup": 0}, {"threads": 0}],
)
def test_engine_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"sizes": [64], "device": "cpu", "runs": 1, **kwargs}
    with pytest.raises(InputError):
        run_benchmark("pdseg-tiny", **args)  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_rss_peak_sees_a_large_buffer() -> None:
    with _rss_peak() as grown:
        buf = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del buf
    assert grown and grown[0] >= 32 * 2**20


@pytest.mark.parametrize("columns", [200, 80])
def test_command_table(app: typer.Typer, columns: int) -> None:
    result = runner.invoke(
        app,
        ["benchmark", "-v", "pdseg-tiny", "-s", "64", "--runs", "2", "--device", "cpu", "--mode", "compare"],
        env={"COLUMNS": str(columns)},
    )
    assert result.exit_code == 0, result.output
    out = result.output
    words = out.split()
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= columns, out
    for text in ("pdseg-tiny", "median", "ms", "img/s", "peak", "MiB", "speed-up", "|dlogit|", "plain"):
        assert text in words, (text, out)
    assert "batch 1" in " ".join(words)
    assert re.search(r"│ 64 +│ optimized +│ +[0-9.]+ +│", out), out
    if columns == 200:
        assert "median ms" in out and "peak MiB" in out and "max |dlogit|" in out


def _report(rows: list[BenchmarkRow], device: str = "cpu") -> BenchmarkReport:
    return BenchmarkReport(
        "pdseg-b", device, "AMD EPYC (2 logical cores)", "fp32", 2, 5, 1, None, "peak: a note", "2.x", rows
    )


def _row(size: int, path: str, ms: float, peak_mib: int, batch: int = 1, **compare: float) -> BenchmarkRow:
    return BenchmarkRow(
        size, batch, path, (ms,), ms, ms * 0.98, 1000 * batch / ms, peak_mib * 2**20, **compare
    )


# the widest figures a run gives: seconds per pass on a CPU; thousands of images per second on a GPU
SLOW_CPU = _report(
    [
        _row(512, "plain", 2345.67, 812),
        _row(512, "optimized", 1876.5, 640, speedup=1.25, max_abs_diff=3.2e-6),
        _row(1024, "plain", 12345.6, 3210),
        _row(1024, "optimized", 10234.5, 2600, speedup=1.21, max_abs_diff=4.1e-6),
    ]
)
FAST_GPU = _report(
    [
        _row(1024, "plain", 12.5, 23456, batch=64),
        _row(1024, "optimized", 9.75, 20480, batch=64, speedup=1.28, max_abs_diff=1.5e-2),
    ],
    device="cuda",
)


@pytest.mark.parametrize("width", [200, 80])
@pytest.mark.parametrize("report", [SLOW_CPU, FAST_GPU], ids=["slow-cpu", "fast-gpu"])
def test_table_shows_every_figure_in_full(
    report: BenchmarkReport, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.cells import cell_len
    from rich.console import Console

    from pdseg_cli import ui
    from pdseg_cli.ui import benchmark as show

    console = Console(width=width, file=io.StringIO())
    monkeypatch.setattr(ui, "console", console)
    show.table(report)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in out and max(cell_len(line) for line in out.splitlines()) <= width, out
    words = out.split()
    for r in report.rows:
        figures = [
            f"{r.median_ms:,.1f}",
            f"{r.min_ms:,.1f}",
            f"{r.images_per_s:,.2f}",
            f"{r.peak_bytes // 2**20:,}",
        ]
        if r.speedup is not None:
            figures += [f"{r.speedup:.2f}x", f"{r.max_abs_diff:.1e}"]
        for figure in figures:
            assert figure in words, (figure, out)
    for header in (
        "size",
        "model",
        "median",
        "min",
        "ms",
        "img/s",
        "peak",
        "MiB",
        "speed-up",
        "max",
        "|dlogit|",
    ):
        assert header in words, (header, out)
    assert f"batch {report.rows[0].batch}" in " ".join(words)
    assert re.search(r"│ 1024 +│ optimized +│", out), out  # one row per size and form
    if width == 200:  # room for one-line headers
        assert "median ms" in out and "max |dlogit|" in out


def test_command_json(app: typer.Typer, checkpoint: Path) -> None:
    result = runner.invoke(
        app, ["benchmark", "-w", str(checkpoint), "-s", "64", "-n", "1", "-d", "cpu", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["variant"] == "pdseg-tiny"
    assert [row["path"] for row in data["rows"]] == ["optimized"]


def test_a_size_out_of_memory_is_reported_and_the_others_still_run(
    app: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdseg_cli.engine import benchmark as engine

    real = engine._measure_size

    def measure(forms, x, dev, size, runs, warmup):  # type: ignore[no-untyped-def]
        if size == 96:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(forms, x, dev, size, runs, warmup)

    monkeypatch.setattr(engine, "_measure_size", measure)
    report = run_benchmark("pdseg-tiny", [64, 96, 128], batch=2, device="cpu", runs=1)
    assert [r.size for r in report.rows] == [64, 128]
    assert report.out_of_memory == [96]
    assert any("2x3x96x96: out of memory on cpu" in n and "--batch" in n for n in report.notes)

    args = ["benchmark", "-v", "pdseg-tiny", "-s", "64", "-s", "96", "-n", "1", "-d", "cpu", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["out_of_memory"] == [96] and [row["size"] for row in data["rows"]] == [64]
    assert "Traceback" not in result.output
    result = runner.invoke(app, args[:-1], env={"COLUMNS": "200"})  # the table, and a warning
    assert result.exit_code == 1 and re.search(r"│ 64 +│ optimized +│", result.output)
    assert "out of memory at --size 96" in result.output

    def broken(forms, x, dev, size, runs, warmup):  # type: ignore[no-untyped-def]
        raise RuntimeError("some other failure")

    monkeypatch.setattr(engine, "_measure_size", broken)
    with pytest.raises(RuntimeError, match="some other failure"):  # not mistaken for memory
        run_benchmark("pdseg-tiny", [64], device="cpu", runs=1)


def test_ctrl_c_keeps_the_sizes_already_timed(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdseg_cli.engine import benchmark as engine

    real = engine._measure_size

    def measure(forms, x, dev, size, runs, warmup):  # type: ignore[no-untyped-def]
        if size == 96:  # the second size
            raise KeyboardInterrupt
        return real(forms, x, dev, size, runs, warmup)

    monkeypatch.setattr(engine, "_measure_size", measure)
    with pytest.raises(KeyboardInterrupt) as stop:  # still a Ctrl-C for Python callers
        run_benchmark("pdseg-tiny", [64, 96, 128], device="cpu", runs=1)
    assert isinstance(stop.value, engine.BenchmarkInterrupted)
    report = stop.value.report
    assert [r.size for r in report.rows] == [64] and report.interrupted_after == 1
    assert report.sizes == [64, 96, 128]

    args = ["benchmark", "-v", "pdseg-tiny", "-s", "64", "-s", "96", "-s", "128", "-n", "1", "-d", "cpu"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 130, result.output
    # no row of size 96 (a figure such as 96.05 ms in the 64 row is no such row)
    assert re.search(r"│ 64 +│ optimized +│", result.output) and not re.search(r"│ 96 +│", result.output)
    assert "partial: interrupted after 1 of 3 sizes" in result.output
    assert "1 of 3 sizes finished before Ctrl-C; to time the rest: --size 96 --size 128" in result.output
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 130
    data = json.loads(result.output[: result.output.rindex("}") + 1])  # the error line follows on stderr
    assert data["interrupted_after"] == 1 and [row["size"] for row in data["rows"]] == [64]
    result = runner.invoke(app, [*args[:3], "-s", "96", "-n", "1", "-d", "cpu"])
    assert result.exit_code == 130 and "┃" not in result.output  # nothing finished: no empty table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-v", "pdseg-tinyy"], "unknown model variant"),
        (["-v", "pdseg-tiny", "-p", "int8"], "not a precision"),
        (["-v", "pdseg-tiny", "-d", "tpu"], "not a device"),
    ],
)
def test_command_user_errors(app: typer.Typer, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["benchmark", *args, "-s", "64", "-n", "1"])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_command_cuda_missing(app: typer.Typer) -> None:
    result = runner.invoke(app, ["benchmark", "-v", "pdseg-tiny", "-s", "64", "-d", "cuda"])
    assert result.exit_code == 2
    assert "CUDA" in result.output


def test_latency_script_reference_and_profile() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "latency.py"),
            "--reference",
            "--variants",
            "pdseg-tiny",
            "--sizes",
            "64",
            "--runs",
            "1",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--profile",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "plain vs optimised" in out.stdout
    assert "| pdseg-tiny | 64x64 | cpu | fp32 |" in out.stdout
    assert "encoder stage 1 blocks" in out.stdout and "NMF (all levels)" in out.stdout
    assert "mkldnn" in out.stdout or "aten::" in out.stdout
    assert "| GEMM peak GMAC/s | floor ms | plain / floor | optimised / floor |" in out.stdout
    assert "GEMM floor" in out.stderr


def test_latency_floor_uses_the_networks_own_gemms() -> None:
    latency = benchmark_script("latency")
    model = create_model("pdseg-tiny").eval()
    x = torch.zeros(1, 3, 64, 64)
    shapes = latency.gemm_shapes(model, x)
    # stage 1 works at stride 4 (16x16 = 256 pixels), 16 channels, MLP ratio 2: proj_1, fc1, fc2
    assert {(256, 16, 16), (256, 16, 32), (256, 32, 16)} <= set(shapes)
    assert len(shapes) == len(set(shapes)) and shapes == sorted(shapes)
    # only ungrouped 1x1 convs: no shape has the depth-wise convs' one input channel
    assert all(k > 1 for _, k, _ in shapes)
    floor = latency.measure_floor(model, x, "cpu", "fp32", gmacs=2.0, repeats=1)
    assert floor.shape in shapes and floor.rate_gmacs > 0
    assert floor.floor_ms == pytest.approx(1000.0 * 2.0 / floor.rate_gmacs)


def test_gpu_suite_script_runs_its_steps(tmp_path: Path) -> None:
    # the GPU suite with its CPU knobs, training skipped (no data folder): every step must succeed
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "VARIANT": "pdseg-tiny",
        "SIZE": "64",
        "BIG_SIZES": "96",
        "BATCHES": "1 2",
        "PRECISIONS": "fp32",
        "RUNS": "1",
        "OMP_NUM_THREADS": "1",
        "PDSEG": f"{sys.executable} -m pdseg_cli",
        "COMPILE": "off",  # a real compile takes minutes here; the option itself is tested elsewhere
        # the script calls python3: this interpreter's, even when its environment is not activated
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "ARCHIVE": str(tmp_path / "suite.tar.gz"),  # one file to bring back from the device machine
    }
    out = tmp_path / "suite"
    script = REPO / "benchmarks" / "gpu_suite.sh"
    done = subprocess.run(
        ["bash", str(script), str(out), str(tmp_path / "no-data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    log = (out / "suite.log").read_text()
    steps = [line for line in log.splitlines() if line.startswith("   exit ")]
    assert len(steps) == 8 and all(line.startswith("   exit 0,") for line in steps), log
    assert "training and eval steps skipped" in log
    # the bundled weights' masks, plain and with --tta, written on the suite's device
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == sorted(p.name for p in (out / "masks_tta").iterdir()) and "rocket.png" in masks
    with tarfile.open(tmp_path / "suite.tar.gz") as packed:
        assert "suite/suite.log" in packed.getnames() and "suite/masks/rocket.png" in packed.getnames()
    report = json.loads((out / "benchmark_fp32_b2.txt").read_text())
    assert report["rows"][0]["batch"] == 2 and report["device"] == "cpu"
    assert "| GEMM peak GMAC/s |" in (out / "latency_reference.txt").read_text()


def test_isnet_for_the_comparison_has_the_published_size() -> None:
    isnet_compare = benchmark_script("isnet_compare")
    with torch.device("meta"):
        params = sum(p.numel() for p in isnet_compare.ISNet().parameters())
    # IS-Net (DIS, ECCV 2022): 44.0M parameters and 160 GMACs at 1024x1024, as issue #7 quotes
    assert params == 44_046_790
    assert isnet_compare.isnet_macs(1024) == 160_082_579_456
    net = isnet_compare.ISNet().eval()
    with torch.inference_mode():
        maps = net(torch.zeros(1, 3, 96, 80))
    assert [tuple(m.shape) for m in maps] == [(1, 1, 96, 80)] * 6


def test_command_compile_option(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: module)  # plumbing only
    args = ["benchmark", "-v", "pdseg-tiny", "-s", "64", "-n", "1", "-d", "cpu"]
    result = runner.invoke(app, [*args, "--compile", "reduce-overhead", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["compile"] == "reduce-overhead"
    plain = runner.invoke(app, [*args, "--mode", "plain", "--compile", "default"])
    assert plain.exit_code == 2 and "applies to the optimized form" in plain.output


def test_latency_gpu_profile_table_reports_the_kernel_floor() -> None:
    from types import SimpleNamespace

    latency = benchmark_script("latency")

    def event(key: str, count: int, gpu_us: float, cpu_us: float) -> SimpleNamespace:
        times = {"self_device_time_total": gpu_us, "self_cpu_time_total": cpu_us}
        return SimpleNamespace(key=key, count=count, **times)

    ops = [event("aten::convolution", 10, 3000.0, 500.0), event("aten::bmm", 4, 1000.0, 100.0)]
    lines = latency.gpu_operator_table(ops, top=1, wall_ms=8.0)
    assert "| aten::convolution | 10 | 3.00 | 75% | 0.50 |" in lines
    assert not any("aten::bmm" in line for line in lines)  # top=1
    assert "GPU kernel time 4.00 ms in a 8.00 ms profiled pass (50% busy)" in lines[-1]


def test_the_busy_cpu_note_suggests_only_what_the_run_does_not_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from pdseg_cli.engine import benchmark as engine

    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 0.0, 0.0))
    assert (engine._cpu_busy_note(None, "optimized") or "").endswith(
        "--threads 1 and --mode compare give steadier figures"
    )
    assert (engine._cpu_busy_note(1, "optimized") or "").endswith("; --mode compare gives steadier figures")
    assert (engine._cpu_busy_note(1, "compare") or "").endswith("timings vary")


def test_peak_memory_of_cuda_graphs_is_taken_while_they_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    # under --compile reduce-overhead the pass measured replayed the graphs, which allocate nothing:
    # the peak showed the weights and the input only
    from pdseg_cli.engine import benchmark as engine

    base, activations = 100 << 20, 900 << 20
    allocator = {"peak": base}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(
        torch.cuda, "reset_peak_memory_stats", lambda device=None: allocator.update(peak=base)
    )
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocator["peak"])
    passes = []

    class Graphs:
        mode = "reduce-overhead"  # as CompiledPDSeg says

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            passes.append(1)
            if len(passes) <= 2:  # compiled and recorded: activations allocated in the graphs' pool
                allocator["peak"] = base + activations
            return x.mean(1, keepdim=True)  # replays: nothing allocated

    cuda = torch.device("cuda")
    x = torch.zeros(1, 3, 32, 32)
    (row,) = engine._measure_size({"optimized": Graphs()}, x, cuda, 32, 3, 2)
    assert row.peak_bytes == base + activations and len(passes) == 5  # no extra pass to measure
    Graphs.mode = "default"  # no CUDA graphs: one more pass, as before (here a replay: base only)
    (eager,) = engine._measure_size({"optimized": Graphs()}, x, cuda, 32, 3, 2)
    assert eager.peak_bytes == base and len(passes) == 11

    assert "record the graphs" in engine.memory_note(cuda, "reduce-overhead")
    assert "record" in engine.memory_note(cuda, "max-autotune")
    assert engine.memory_note(cuda, "default") == engine.memory_note(cuda, None) == engine.CUDA_MEMORY_NOTE
    assert engine.memory_note(torch.device("cpu"), "reduce-overhead") == engine.CPU_MEMORY_NOTE
