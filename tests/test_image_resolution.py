"""The input's pixel density (dpi) is read and written into every output: masks, cut-outs and
composites, PNG (pHYs) and TIFF (XResolution/YResolution/ResolutionUnit) alike."""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import png_chunks, run_cli, textured_image, tiny_checkpoint
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from pdseg_cli.data import header
from pdseg_cli.data import images as imio


def _jpeg(dpi: tuple[int, int] | None = None, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    extra: dict[str, object] = {} if dpi is None else {"dpi": dpi}
    if exif is not None:
        extra["exif"] = exif.tobytes()
    Image.fromarray(textured_image(32, 48)).save(buf, "JPEG", quality=90, **extra)
    return buf.getvalue()


def _jfif_in_cm(data: bytes, x: int, y: int) -> bytes:
    """``data`` (Pillow's JPEG, JFIF first) with its JFIF density in dots per centimetre (units 2)."""
    assert data[6:11] == b"JFIF\x00"
    return data[:13] + struct.pack(">BHH", 2, x, y) + data[18:]


def _png_with_phys(x: int, y: int, unit: int) -> bytes:
    return imio.png_with_chunk(
        imio.encode_png(textured_image(32, 48)), b"pHYs", struct.pack(">IIB", x, y, unit)
    )


def _phys(path: Path) -> tuple[int, int, int] | None:
    found = [data for name, data in png_chunks(path.read_bytes()) if name == b"pHYs"]
    assert len(found) <= 1
    return struct.unpack(">IIB", found[0]) if found else None


def _exif(orientation: int, x: int, y: int) -> Image.Exif:
    exif = Image.Exif()
    exif[282], exif[283], exif[296] = IFDRational(x, 1), IFDRational(y, 1), 2  # inch
    exif[0x0112] = orientation
    return exif


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One predict run over every input below; its --out folder."""
    root = tmp_path_factory.mktemp("dpi")
    inputs = root / "in"
    inputs.mkdir()
    (inputs / "jfif600.jpg").write_bytes(_jpeg(dpi=(600, 600)))
    (inputs / "cm236.jpg").write_bytes(_jfif_in_cm(_jpeg(dpi=(600, 600)), 236, 236))
    (inputs / "turned.jpg").write_bytes(_jpeg(exif=_exif(6, 300, 600)))  # no JFIF density: EXIF's
    (inputs / "phys.png").write_bytes(_png_with_phys(3937, 7874, 1))
    (inputs / "plain.jpg").write_bytes(_jpeg())
    tifffile.imwrite(
        inputs / "scan16.tif",
        textured_image(32, 48, dtype=np.uint16),
        photometric="rgb",
        resolution=(600, 600),
        resolutionunit="INCH",
    )
    ckpt = tiny_checkpoint(root / "tiny.pt", train_size=64, classifier_std=3.0)
    out = root / "out"
    result = run_cli(
        "predict", inputs, "--out", out, "-w", ckpt, "--device", "cpu", "--size", "64",
        "--save", "mask,alpha,composite",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_jfif_600_dpi_goes_into_every_png_output(outputs: Path) -> None:
    for name in ("jfif600.png", "jfif600_alpha.png", "jfif600_composite.png"):
        assert _phys(outputs / name) == (23622, 23622, 1), name  # 600 / 0.0254 = 23622.05
        with Image.open(outputs / name) as im:
            assert im.info["dpi"] == pytest.approx((600, 600), abs=0.01)
        names = [chunk for chunk, _ in png_chunks((outputs / name).read_bytes())]
        assert names.index(b"pHYs") < names.index(b"IDAT")
        assert names[:2] == [b"IHDR", b"tEXt"]  # the output mark stays first
        assert header.carries_output_mark(outputs / name)


def test_a_jfif_density_in_dots_per_cm(outputs: Path, tmp_path: Path) -> None:
    path = tmp_path / "cm.jpg"
    path.write_bytes(_jfif_in_cm(_jpeg(dpi=(600, 600)), 236, 118))
    assert imio.read_image(path).density == header.Density(236.0, 118.0, "cm")
    assert _phys(outputs / "cm236_alpha.png") == (23600, 23600, 1)


def test_an_uneven_density_turns_with_exif_orientation_6(outputs: Path, tmp_path: Path) -> None:
    path = tmp_path / "t.jpg"
    path.write_bytes(_jpeg(dpi=(300, 600), exif=_exif(6, 300, 600)))  # JFIF, oriented by EXIF
    loaded = imio.read_image(path)
    assert loaded.pixels.shape[:2] == (48, 32)  # turned upright
    assert loaded.density == header.Density(600.0, 300.0, "inch")
    for name in ("turned.png", "turned_alpha.png"):
        assert _phys(outputs / name) == (23622, 11811, 1), name  # x 600 dpi, y 300 dpi


def test_a_16_bit_tiff_at_600_dpi_gives_tiffs_at_600_dpi(outputs: Path) -> None:
    for name in ("scan16_alpha.tif", "scan16_composite.tif"):
        with tifffile.TiffFile(outputs / name) as tif:
            tags = tif.pages[0].tags
            assert tags["XResolution"].value == (600, 1) and tags["YResolution"].value == (600, 1)
            assert tags["ResolutionUnit"].value == tifffile.RESUNIT.INCH
    assert _phys(outputs / "scan16.png") == (23622, 23622, 1)  # the mask: an 8-bit PNG


def test_a_png_phys_round_trips_exactly(outputs: Path) -> None:
    for name in ("phys.png", "phys_alpha.png", "phys_composite.png"):
        assert _phys(outputs / name) == (3937, 7874, 1), name


def test_an_input_without_density_writes_none(outputs: Path) -> None:
    assert imio.read_image(outputs.parent / "in" / "plain.jpg").density is None  # JFIF units 0
    for name in ("plain.png", "plain_alpha.png", "plain_composite.png"):
        assert _phys(outputs / name) is None, name


@pytest.mark.parametrize(
    ("x", "y", "unit"),
    [(0, 300, 1), (300, 300, 0), (2**31, 2**31, 1), (300, 0, 1)],
    ids=["zero", "no-unit", "absurd", "zero-y"],
)
def test_a_nonsense_png_density_is_passed_over(tmp_path: Path, x: int, y: int, unit: int) -> None:
    path = tmp_path / "n.png"
    path.write_bytes(_png_with_phys(x, y, unit))
    loaded = imio.read_image(path)
    assert loaded.density is None
    assert _phys_of(imio.encode_png(loaded.pixels, density=loaded.density)) is None


def _phys_of(png: bytes) -> bytes | None:
    return next((data for name, data in png_chunks(png) if name == b"pHYs"), None)


def test_density_rules() -> None:
    assert header.density(600, 600, "inch") == header.Density(600.0, 600.0, "inch")
    for bad in (0, -5, math.nan, math.inf, 100_001):
        assert header.density(bad, 600, "inch") is None
    assert header.density(600, 600, None) is None
    assert header.density(40_000, 40_000, "cm") is None  # 101,600 dpi
    assert header.Density(600, 600).per_metre() == (23622, 23622)
    assert header.Density(236.22, 236.22, "cm").per_metre() == (23622, 23622)
    assert header.Density(300, 600).oriented(8) == header.Density(600, 300)
    assert header.Density(300, 600).oriented(3) == header.Density(300, 600)
    assert header.tiff_density((600, 1), (600, 1), None) == header.Density(600.0, 600.0, "inch")
    assert header.tiff_density((600, 1), (600, 1), 1) is None  # RESUNIT NONE: an aspect ratio only
    assert header.tiff_density((1, 0), (600, 1), 2) is None
    assert header.tiff_density(None, None, 2) is None


def test_a_tiff_in_centimetres_is_written_back_in_centimetres(tmp_path: Path) -> None:
    pixels = textured_image(8, 8, dtype=np.uint16)
    imio.write_tiff(tmp_path / "cm.tif", pixels, density=header.Density(236.22, 118.11, "cm"))
    loaded = imio.read_image(tmp_path / "cm.tif")
    assert loaded.density == header.Density(236.22, 118.11, "cm")
    with tifffile.TiffFile(tmp_path / "cm.tif") as tif:
        assert tif.pages[0].tags["XResolution"].value == (11811, 50)
        assert tif.pages[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
    imio.write_tiff(tmp_path / "none.tif", pixels)
    assert imio.read_image(tmp_path / "none.tif").density is None  # tifffile's 1/1, no unit
