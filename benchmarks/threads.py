"""Wall time of ``pdseg predict`` and ``pdseg train`` under thread and worker settings, idle and busy.

Not a test. It answers two questions for a small CPU machine: which ``--threads`` (and, for
``train``, ``--workers``) is fastest, and how far the defaults are from it, on an idle machine and
on one where other processes keep ``--busy`` cores spinning (a shared server, a laptop with a
browser open). Each setting runs the real command in a fresh process and the best of
``--repeat`` runs is kept.

Predict works on large photos made from the bundled examples (upscaled to ``--side`` pixels on
the long side, JPEG), at ``--size full``, as a user cutting out scans would; train runs a few
steps on ``--data`` (a folder with ``im/`` and ``gt/``).

    python benchmarks/threads.py                                  # predict and train, idle and 1 busy core
    python benchmarks/threads.py --only predict --repeat 3 --settings default "--threads 1" "--threads 2"
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source checkout, uninstalled


def _spin() -> None:  # pragma: no cover - a load generator
    while True:
        pass


def _make_photos(folder: Path, side: int) -> int:
    import cv2

    n = 0
    for path in sorted((ROOT / "examples" / "images").glob("*.jpg")):
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        scale = side / max(h, w)
        big = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / path.name), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
        n += 1
    return n


def _timed(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def _settings(kind: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """(label, extra CLI arguments, extra environment) of each setting measured."""
    rows: list[tuple[str, list[str], dict[str, str]]] = [
        ("default", [], {}),
        ("--threads 1", ["--threads", "1"], {}),
        ("--threads 2", ["--threads", "2"], {}),
        ("OMP_NUM_THREADS=1", [], {"OMP_NUM_THREADS": "1"}),
    ]
    if kind == "train":
        rows += [
            ("--workers 2", ["--workers", "2"], {}),
            ("--threads 1 --workers 1", ["--threads", "1", "--workers", "1"], {}),
        ]
    return rows


def _link_pairs(data: Path, folder: Path, n: int) -> None:
    """The first ``n`` image/mask pairs of ``data`` linked into ``folder``/im and gt."""
    for sub in ("im", "gt"):
        (folder / sub).mkdir(parents=True)
    for image in sorted((data / "im").iterdir())[:n]:
        mask = data / "gt" / (image.stem + ".png")
        (folder / "im" / image.name).symlink_to(image)
        (folder / "gt" / mask.name).symlink_to(mask)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["predict", "train"], default=None)
    parser.add_argument(
        "--busy", type=int, nargs="+", default=[0, 1], help="spinning processes to run alongside"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--settings", nargs="+", default=None, help="only these rows, by label (e.g. default)"
    )
    parser.add_argument("--side", type=int, default=2560, help="long side of the predict photos")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "davis16-train"))
    parser.add_argument(
        "--pairs", type=int, default=64, help="train: pairs of --data used (batch 8: pairs/8 steps)"
    )
    args = parser.parse_args()

    pdseg = [sys.executable, "-m", "pdseg_cli"]
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    kinds = [args.only] if args.only else ["predict", "train"]
    print(f"cores {os.cpu_count()}, repeat {args.repeat}, best of the repeats, seconds of wall time")
    print("| command | busy cores | setting | seconds | vs best |")
    print("|---|--:|---|--:|--:|")
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        n = _make_photos(photos, args.side)
        train_data = Path(tmp) / "train"
        _link_pairs(Path(args.data), train_data, args.pairs)
        for kind in kinds:
            for busy in args.busy:
                spinners = [mp.Process(target=_spin, daemon=True) for _ in range(busy)]
                for p in spinners:
                    p.start()
                try:
                    times = []
                    chosen = [
                        row for row in _settings(kind) if args.settings is None or row[0] in args.settings
                    ]
                    for label, extra, env_extra in chosen:
                        out = Path(tmp) / f"out-{kind}-{busy}-{len(times)}"
                        if kind == "predict":
                            cmd = [
                                *pdseg,
                                "predict",
                                str(photos),
                                "--out",
                                str(out),
                                "--size",
                                "full",
                                *extra,
                            ]
                        else:
                            cmd = [
                                *pdseg,
                                "train",
                                "--train",
                                str(train_data),
                                "--out",
                                str(out),
                                "--variant",
                                "pdseg-t",
                            ]
                            cmd += [
                                "--size",
                                "256",
                                "--batch",
                                "8",
                                "--val-every",
                                "0",
                                "--cache",
                                "ram",
                                "--epochs",
                                "1",
                            ]
                            cmd += ["--precision", "fp32", "--device", "cpu", "--overwrite", *extra]
                        times.append((label, _timed(cmd, {**base_env, **env_extra}, args.repeat)))
                    best = min(t for _, t in times)
                    for label, t in times:
                        what = (
                            f"predict {n} photos, {args.side} px, --size full"
                            if kind == "predict"
                            else (f"train pdseg-t, {args.pairs} pairs, 256, batch 8")
                        )
                        print(f"| {what} | {busy} | {label} | {t:.1f} | {t / best:.2f}x |", flush=True)
                finally:
                    for p in spinners:
                        p.terminate()


if __name__ == "__main__":
    main()
