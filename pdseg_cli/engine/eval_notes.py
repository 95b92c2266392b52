"""What ``pdseg eval`` says about the files it scored, beside the numbers: how a file was read
(16-bit, colour, damaged, a mask in the alpha channel, an empty GT), maps stretched to another
aspect ratio, and the wording those warnings share with the table's notes (``ui/evaluation.py``).
Kept in the report (its JSON ``notes``) so that it holds every warning the table prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pdseg_cli.engine.eval_pairs import listing
from pdseg_cli.engine.eval_report import ImageRecord
from pdseg_cli.errors import counted
from pdseg_cli.metrics.common import GT_THRESHOLD
from pdseg_cli.metrics.reading import MaskFile, mask_in_alpha

# How a file was read, when the user should know: note kind -> explanation (files are listed after it)
NOTE_TEXT = {
    "gt_16bit": "GT files are 16-bit: read as their high byte (v >> 8), as cv2.IMREAD_GRAYSCALE does",
    "pred_16bit": "prediction files are 16-bit: read as their high byte (v >> 8), as IMREAD_GRAYSCALE does",
    "gt_colour": "GT files are colour or palette images: read as gray luminance 0.299 R + 0.587 G + 0.114 B",
    "pred_colour": "prediction files are colour or palette images, not gray maps (photos given as "
    "--pred?): read as gray luminance 0.299 R + 0.587 G + 0.114 B",
    "gt_damaged": "GT files are damaged (their decoder reported corrupt data): parts may read wrong",
    "pred_damaged": "prediction files are damaged (the decoder reported corrupt data): parts may read wrong",
    "gt_alpha": "GT files keep their mask in the alpha channel (under one uniform colour, or under the "
    "photo, as cut-outs do), which is ignored (as in the reference tools), so they read as their "
    "colours; save masks as gray PNGs",
    "pred_alpha": "prediction files keep their map in the alpha channel (under one uniform colour, or under "
    "the photo: cut-outs such as predict's _alpha.png), which is ignored (as in the reference tools); "
    "score the gray maps (predict --save mask)",
    "gt_empty": f"GT masks have no pixel above {GT_THRESHOLD} (0/1 masks?): they read as empty GTs "
    "(all background), as in the reference tools; store masks as 0/255",
    "gt_16bit_empty": "GT files are 16-bit with no value of 256 or more (0/255 masks saved as 16-bit?): "
    "their high bytes are all 0, so they read as empty GTs, as in the reference tools; store masks as "
    "8-bit 0/255",
    "pred_low": f"prediction maps have no pixel above {GT_THRESHOLD} (0/1 maps?): F, wF, MAE, S and E "
    f"stretch each map to its own range, but HCE reads the bytes at > {GT_THRESHOLD} as the reference "
    "tools do, and sees them as empty; store maps as 0..255",
    # the same kind where the model made the maps (--weights): the images are what the user has,
    # and the fix of a stored file does not apply
    "pred_low_by_model": f"the model's maps of these images have no pixel above {GT_THRESHOLD} (no "
    "object found): F, wF, MAE, S and E stretch each map to its own range, but HCE reads the bytes at > "
    f"{GT_THRESHOLD} as the reference tools do, and sees them as empty",
}


def file_notes(mask: MaskFile, role: str) -> list[str]:
    """Note kinds (keys of ``NOTE_TEXT``) of a file: 16-bit, colour, damaged, a GT that reads as
    empty, a prediction HCE reads as empty."""
    prefix = "gt" if role == "GT" else "pred"
    kinds = []
    if mask.sixteen_bit:
        kinds.append(f"{prefix}_16bit")
    if mask.colour:
        kinds.append(f"{prefix}_colour")
        if mask_in_alpha(mask):
            kinds.append(f"{prefix}_alpha")
    if mask.decoder_said:
        kinds.append(f"{prefix}_damaged")
    top = int(mask.array.max())
    if 0 < top <= GT_THRESHOLD:
        kinds.append("gt_empty" if role == "GT" else "pred_low")
    elif role == "GT" and top == 0 and mask.sixteen_bit:
        kinds.append("gt_16bit_empty")
    return kinds


def aspect_differs(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two (H, W) sizes differ in shape by more than rounding (2%)."""
    return abs((a[1] / a[0]) / (b[1] / b[0]) - 1.0) > 0.02


def split_warnings(
    name: str, records: Sequence[ImageRecord], sources: Mapping[str, Path] | None = None
) -> list[str]:
    """The warnings about a split's scored images, kept in the report (its JSON ``notes``) so that
    it holds every warning the table's notes print: stretched maps, then how files were read.

    ``sources`` (the image of each stem, when the model ran on the split) makes the stretched maps
    the images' doing: the model's maps have their image's size, so the image is what to check."""
    # a map of another shape, not just another scale, is likely rotated or of another image
    odd = [r for r in records if r.resized and aspect_differs(r.pred_size, r.gt_size)]
    warnings = []
    one = len(odd) == 1
    has, its = ("has", "its") if one else ("have", "their")
    if odd and sources:
        warnings.append(
            f"{name}: {counted(len(odd), 'image')}{image_folder(sources)} {has} another aspect ratio than "
            f"{its} GT, so the model's {'map' if one else 'maps'}, made at the image's size, "
            f"{'was' if one else 'were'} stretched to the GT's: "
            f"{listing([image_line(r, sources) for r in odd], 5)}; rotated (an EXIF orientation pdseg "
            "applies and the GT was not drawn with?), or the GT of another image?"
        )
    elif odd:
        warnings.append(
            f"{name}: {counted(len(odd), 'prediction')} {has} another aspect ratio than {its} GT, so "
            f"{'was' if one else 'were'} stretched: {listing([r.stem for r in odd], 5)} (rotated, or "
            "another image's map?)"
        )
    return warnings + grouped_notes(records, sources)


def wxh(size: tuple[int, int]) -> str:
    """An (H, W) size as people write it: ``WxH``."""
    return f"{size[1]}x{size[0]}"


def image_line(record: ImageRecord, sources: Mapping[str, Path]) -> str:
    """``name.jpg 427x240 (GT 854x480)``: the image a resized map was made from (``--weights``),
    whose size the map has, and its GT's size."""
    source = sources.get(record.stem)
    return f"{source.name if source else record.stem} {wxh(record.pred_size)} (GT {wxh(record.gt_size)})"


def image_folder(sources: Mapping[str, Path]) -> str:
    """`` in <im folder>`` for a message naming images by file name, or "" when they are in several."""
    folders = {path.parent for path in sources.values()}
    return f" in {folders.pop()}" if len(folders) == 1 else ""


def grouped_notes(records: Sequence[ImageRecord], sources: Mapping[str, Path] | None = None) -> list[str]:
    """One line per note kind, naming the files it applies to. With ``sources`` (the model made the
    maps, in a temporary folder gone by the time the note is read) a map's note names its image."""
    files: dict[str, list[str]] = {}
    for r in records:
        for kind, path in r.notes:
            if sources and f"{kind}_by_model" in NOTE_TEXT and r.stem in sources:
                kind, path = f"{kind}_by_model", str(sources[r.stem])
            files.setdefault(kind, []).append(path)
    return [
        f"{NOTE_TEXT[kind]} ({counted(len(paths), 'file')}): {listing(paths, 5)}"
        for kind, paths in files.items()
    ]
