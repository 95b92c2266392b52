"""Score finished training runs on one evaluation folder and print the ablation table, as markdown.

Each ``--run LABEL=DIR`` names a ``pdseg train`` run folder; its ``last.pt`` (the EMA weights of
the last epoch) predicts the maps at the checkpoint's training size, exactly as ``pdseg eval
--weights DIR/last.pt`` does, and :func:`pdseg_cli.evaluate` scores them at the GT's resolution.
Runs that share a label (the same setting, different seeds) are averaged, with each seed's row
listed too, so that the spread between seeds can be seen next to the differences between settings.

Usage (from the repository root)::

    python benchmarks/ablation_table.py --data ../shared/data/davis16-eval \\
        --run "(a) single head=runs/a-s0" --run "(a) single head=runs/a-s1" \\
        --run "(c) progressive + multi=runs/c-s0"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from pdseg_cli import Predictor, evaluate
from pdseg_cli.metrics.aggregate import TABLE_KEYS
from pdseg_cli.metrics.table import TABLE_METRICS
from pdseg_cli.model.build import load_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder with im/ and gt/")
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR", help="a run folder")
    parser.add_argument("--jobs", type=int, default=1, help="scoring processes (default 1)")
    return parser.parse_args(argv)


def score_run(run: Path, data: Path, folder: Path, jobs: int) -> dict[str, float]:
    """The six metrics of ``run/last.pt`` on ``data``."""
    predictor = Predictor(run / "last.pt", device="cpu")
    summary = predictor.predict_paths([data / "im"], folder)
    if summary.failed:
        raise SystemExit(f"{run}: {summary.failed} images failed")
    scores = evaluate(folder, data / "gt", jobs=jobs, use_cache=False).splits[0].scores.as_dict()
    return {k: float(scores[k]) for k in TABLE_KEYS}


_FORMATS = {m.key: m.format for m in TABLE_METRICS}  # the eval table's own formats, one per metric


def fmt(metric: str, value: float) -> str:
    return _FORMATS[metric](value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    groups: dict[str, list[tuple[Path, dict[str, float]]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="pdseg-ablation-") as tmp:
        for i, spec in enumerate(args.run):
            label, sep, path = spec.partition("=")
            if not sep:
                raise SystemExit(f"--run {spec!r}: expected LABEL=DIR")
            run = Path(path)
            groups[label].append((run, score_run(run, args.data, Path(tmp) / str(i), args.jobs)))
            print(f"{label}: {run} scored", file=sys.stderr)

    lines = [
        "| setting | run | seed | " + " | ".join(TABLE_KEYS) + " |",
        "|---|---|--:|" + "--:|" * len(TABLE_KEYS),
    ]
    for label, runs in groups.items():
        for run, scores in runs:
            seed = load_checkpoint(run / "last.pt").provenance.get("seed", "?")
            lines.append(
                f"| {label} | `{run.name}` | {seed} | "
                + " | ".join(fmt(k, scores[k]) for k in TABLE_KEYS)
                + " |"
            )
        if len(runs) > 1:
            means = {k: statistics.fmean(s[k] for _, s in runs) for k in TABLE_KEYS}
            lines.append(
                f"| **{label}** | mean of {len(runs)} | | "
                + " | ".join(f"**{fmt(k, means[k])}**" for k in TABLE_KEYS)
                + " |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
