"""What ``pdseg eval`` shows: a status line, progress bars, the DIS table and the notes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from pdseg_cli import ui
from pdseg_cli.data.eval_splits import PUBLISHED_SIZES
from pdseg_cli.engine.eval_notes import image_folder, image_line, wxh
from pdseg_cli.errors import counted, listing
from pdseg_cli.metrics.table import TABLE_METRICS

if TYPE_CHECKING:
    from pdseg_cli.engine.eval_report import EvalReport

_MAX_LISTED = 10  # warnings shown one per line; the rest are counted


def start(n_images: int, split_names: Sequence[str], jobs: int, cache: str | None) -> None:
    """One status line on stderr before the scoring starts."""
    splits = ", ".join(split_names)
    cache_text = f"GT cache {cache}" if cache else "GT cache off"
    ui.info(
        f"scoring {counted(n_images, 'image')} ({splits}) · {counted(jobs, 'process', 'processes')} · "
        f"{cache_text}"
    )


def maps_from(root: str, folders: Mapping[str, str]) -> None:
    """Where ``--pred`` maps are read from: the root, and the subfolder chosen for each split that
    has one (``<pred>/<split>/``, IS-Net's ``<pred>/DIS5K-TE1/``), a choice made without asking."""
    chosen = [f"{name} from {_under(folder, root)}" for name, folder in folders.items() if folder != root]
    ui.info(f"maps read from {root}" + (f": {', '.join(chosen)}" if chosen else ""))


def _under(folder: str, root: str) -> str:
    """``sub/`` for a folder inside ``root``, else the folder's whole path."""
    try:
        return f"{Path(folder).relative_to(root)}/"
    except ValueError:
        return folder


def interrupt_hint(scoring: bool, cache: str | None, cache_kept: bool) -> str:
    """The hint after a Ctrl-C, on going on. Running again is safe: --json and --csv are written
    only at the end, maps (--save-preds) and GT cache entries through a temporary file and a rename,
    so an interrupted run leaves no partial file. What the GT cache holds is kept, not pruned.

    Args:
        scoring: the scoring had started (the GT cache is written only then).
        cache: the GT cache it used, or None when off.
        cache_kept: the cache holds GT data (it could be written, and was), there for the next run.
    """
    if not scoring:
        return "running the same command again is safe; it starts over"
    if cache_kept:
        return (
            f"running the same command again is safe; the GT cache {cache} keeps the GT data prepared so "
            "far, so that work is not done again"
        )
    if cache is not None:
        return f"running the same command again is safe; it starts over (the GT cache {cache} kept nothing)"
    return "running the same command again is safe; it starts over (the GT cache is off)"


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Callable[..., None]]:
    """Yield ``advance(*_)``: a progress bar over images (transient, on stderr)."""
    with ui.progress_bar(description, total=total, unit="img") as advance:
        yield lambda *_args: advance()


def render(report: EvalReport, *, table_on_stderr: bool = False) -> None:
    """The DIS table on stdout (on stderr when stdout carries ``--json -`` or ``--csv -``), then
    the notes on stderr.

    The columns are the metric table's DIS columns (``pdseg_cli.metrics.table``), in the paper's
    order, each printed with its entry's format.

    Args:
        report: a ``pdseg_cli.engine.evaluate.EvalReport``.
    """
    # GTs left out (--allow-missing) show as "2 of 3": the row is then not a full-split number
    missing = report.missing_counts()
    rows = [
        [
            name,
            f"{sc.count} of {sc.count + missing[name]}" if missing.get(name) else str(sc.count),
            *(m.format(getattr(sc, m.field)) for m in TABLE_METRICS),
        ]
        for name, sc in report.rows()
    ]
    caption = [
        "E: mean E-measure (E^m) · HCE: official DIS procedure (relax 5, epsilon 2), mean over images",
        "F, wF, MAE, S, E as pysodmetrics 1.6.2; an image whose S-measure is NaN counts as 0",
    ]
    for pooled in report.pooled:
        # says how the row is formed: it is the published tables' convention, not a pooled row
        line = (
            f"{pooled.name}: mean of the {', '.join(pooled.members)} rows, each split weight 1, as in "
            f"published DIS tables ({pooled.scores.count} images in all)"
        )
        if pooled.missing:
            line += f"; its splits leave out {counted(pooled.missing, 'GT mask')} (--allow-missing)"
        published = sum(PUBLISHED_SIZES.get(member, 0) for member in pooled.members)
        if pooled.scores.count + pooled.missing != published:  # a partial copy: not the published row
            line += f"; DIS5K's {len(pooled.members)} splits hold {published:,} images: not the published row"
        caption.append(line)
    out = ui.err_console if table_on_stderr else ui.console
    header = ["split", "images", *(m.label for m in TABLE_METRICS)]
    # a split's name is the user's folder name: no markup read in it, no control codes
    cells = [header, *([ui.printable(cell) for cell in row] for row in rows)]
    widths = [max(cell_len(row[i]) for row in cells) for i in range(len(header))]
    # A long name folds onto more lines; a number is never cut (every score showed as "0…" beside a
    # long name). Too narrow even so (60 columns), the table drops its outer edges and their padding
    # (4 columns); narrower still, it is drawn wider than the terminal, which wraps its lines.
    name_min = min(widths[0], len("split"))
    need = name_min + sum(widths[1:]) + 3 * len(widths) + 1  # a rule and two spaces a column
    edges = need <= out.width
    table = Table(
        title="pdseg eval",
        title_justify="left",
        caption=Text("\n".join(map(ui.printable, caption))),  # split names: no markup read in them
        caption_justify="left",
        show_edge=edges,
        pad_edge=edges,
        width=None if need - 4 <= out.width else need - 4,
    )
    table.add_column(header[0], overflow="fold", min_width=name_min)
    for column, width in zip(header[1:], widths[1:], strict=True):
        table.add_column(column, justify="right", no_wrap=True, min_width=width)
    for row in cells[1:]:
        table.add_row(*map(Text, row))
    if not ui.is_quiet():
        out.print(table, crop=False)
    notes(report)


def notes(report: EvalReport) -> None:
    """Resized predictions, skipped and unmatched files, and the split's warnings (stderr); the
    warnings, stretched maps among them, come from the report, so its JSON holds them too."""
    for split in report.splits:
        if split.resized and split.sources:  # --weights: the user gave images, not maps
            ui.info(_resized_images(split))
        elif split.resized:
            resized = [r for r in split.images if r.resized]
            ui.info(
                f"{split.name}: {split.resized} of {len(split.images)} predictions had another size "
                "and were resized to their GT's size (bilinear, cv2 INTER_LINEAR): "
                + _listing([f"{r.stem} {wxh(r.pred_size)} -> {wxh(r.gt_size)}" for r in resized], 5)
            )
        if split.missing:
            ui.warn(
                f"{split.name}: {counted(len(split.missing), 'GT mask')} without a usable prediction left "
                f"out (--allow-missing): {_listing(split.missing)}"
            )
        if split.unmatched:
            ui.warn(
                f"{split.name}: {counted(len(split.unmatched), 'prediction')} "
                f"{'has' if len(split.unmatched) == 1 else 'have'} no GT of the same name and "
                f"{'was' if len(split.unmatched) == 1 else 'were'} ignored: {_listing(split.unmatched)}"
            )
        warnings = list(dict.fromkeys(split.warnings))
        for w in warnings[:_MAX_LISTED]:
            ui.warn(w)
        if len(warnings) > _MAX_LISTED:
            ui.warn(f"{split.name}: ... and {len(warnings) - _MAX_LISTED} more notes like these (see --json)")


def _resized_images(split: Any) -> str:
    """The images (``--weights``) whose size is not their GT's, with both sizes: the model's map of
    each has its image's size, so it was resized to the GT's, as a ``--pred`` map would be."""
    resized = [r for r in split.images if r.resized]
    if len(resized) == 1:
        what = (
            "has another size than its GT: the model's map, made at the image's size, was resized to the "
            "GT's size"
        )
    else:
        what = (
            "have another size than their GTs: the model's maps, made at the images' sizes, were resized to "
            "their GTs' sizes"
        )
    return (
        f"{split.name}: {len(resized)} of {counted(len(split.images), 'image')}{image_folder(split.sources)} "
        f"{what} (bilinear, cv2 INTER_LINEAR) to be scored: "
        + _listing([image_line(r, split.sources) for r in resized], 5)
    )


def _listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    return listing(items, limit)
