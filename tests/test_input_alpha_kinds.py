"""Input transparency that OpenCV or the TIFF readers do not hand over as a plain alpha channel:
PNG tRNS colour keys, associated (premultiplied) TIFF alpha on both TIFF paths, float alpha."""

from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import gray_extra_tiffs

from pdseg_cli.data import images as imio
from pdseg_cli.data import transforms as T

# three rows: opaque, half transparent (alpha 128 of 255), fully transparent
_COLOUR = (200, 100, 50)
_ALPHA8 = np.array([255, 128, 0], np.uint8)


def _png_chunk(name: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + name + data + struct.pack(">I", zlib.crc32(name + data))


def _png_with_key(samples: np.ndarray, colour_type: int, bit_depth: int, key: tuple[int, ...]) -> bytes:
    """A PNG of ``samples`` ((H, W) gray or (H, W, 3) RGB, 8 or 16 bits) with a tRNS colour key,
    written by hand: no writer the tests have makes a 16-bit key."""
    height, width = samples.shape[:2]
    raw = samples.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, -1)
    image = b"".join(b"\x00" + row.tobytes() for row in raw)  # filter 0 on every row
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"tRNS", struct.pack(f">{len(key)}H", *key))
        + _png_chunk(b"IDAT", zlib.compress(image))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("colour_type", [0, 2])  # gray, RGB
def test_a_png_colour_key_is_transparent(tmp_path: Path, colour_type: int, bit_depth: int) -> None:
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    top = np.iinfo(dtype).max
    rgb = np.random.default_rng(3).integers(top // 4, top + 1, (5, 7, 3)).astype(dtype)  # none is the key
    samples = rgb if colour_type == 2 else rgb[..., 0]
    key_pixels = np.zeros((5, 7), bool)
    key_pixels[1, 2] = key_pixels[4, :] = True
    key_value = np.array([10, 20, 30][: 3 if colour_type == 2 else 1], dtype) * (
        257 if bit_depth == 16 else 1
    )
    samples[key_pixels] = key_value if colour_type == 2 else key_value[0]
    samples[0, 0] = key_value + 1 if colour_type == 2 else key_value[0] + 1  # one level off: opaque
    key = tuple(int(v) for v in key_value)
    if bit_depth == 8:  # the chunk holds 16 bits; an 8-bit file's key is its low byte
        key = tuple(0x100 | v for v in key)
    path = tmp_path / "key.png"
    path.write_bytes(_png_with_key(samples, colour_type, bit_depth, key))

    loaded = imio.read_image(path)
    assert loaded.alpha is not None and loaded.alpha.dtype == dtype
    np.testing.assert_array_equal(loaded.alpha, np.where(key_pixels, 0, top))
    colours = samples if colour_type == 2 else np.repeat(samples[..., None], 3, axis=2)
    np.testing.assert_array_equal(loaded.pixels, colours)


def test_a_png_without_key_pixels_keeps_no_alpha(tmp_path: Path) -> None:
    gray = np.full((3, 4), 9, np.uint8)
    path = tmp_path / "nokey.png"
    path.write_bytes(_png_with_key(gray, 0, 8, (7,)))
    assert imio.read_image(path).alpha is None  # opaque everywhere: nothing to keep


def _rgba8() -> tuple[np.ndarray, np.ndarray]:
    """(straight RGBA, the same premultiplied) of three rows, one per :data:`_ALPHA8` value."""
    straight = np.zeros((3, 4, 4), np.uint8)
    straight[..., :3] = _COLOUR
    straight[..., 3] = _ALPHA8[:, None]
    premultiplied = straight.copy()
    premultiplied[..., :3] = np.rint(straight[..., :3] * (straight[..., 3:] / 255.0))
    return straight, premultiplied


def _no_tifffile_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make tifffile fail as it does on LZW without imagecodecs: the reader falls back on libtiff."""

    def no_codec(*args: object, **kwargs: object) -> None:
        raise ImportError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codec)


@pytest.mark.parametrize("reader", ["tifffile", "libtiff"])
@pytest.mark.parametrize("bits", [8, 16])
def test_associated_alpha_tiff_colours_are_unpremultiplied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str, bits: int
) -> None:
    straight, premultiplied = _rgba8()
    scale, dtype = (257, np.uint16) if bits == 16 else (1, np.uint8)
    path = tmp_path / "assoc.tif"
    tifffile.imwrite(
        path, premultiplied.astype(dtype) * dtype(scale), photometric="rgb", extrasamples=["assocalpha"]
    )
    if reader == "libtiff":
        _no_tifffile_codec(monkeypatch)

    loaded = imio.read_image(path)
    assert loaded.pixels.dtype == dtype and loaded.alpha is not None and loaded.alpha.dtype == dtype
    np.testing.assert_array_equal(loaded.alpha, straight[..., 3].astype(dtype) * dtype(scale))
    kept = loaded.pixels[:2].astype(np.int64)  # opaque and half transparent: the straight colour
    assert np.abs(kept - np.array(_COLOUR) * scale).max() <= scale  # within one 8-bit grey level
    assert loaded.pixels[2].max() == 0  # fully transparent: a premultiplied file keeps no colour
    assert not loaded.warnings  # associated alpha lost nothing: no "read as black" note


def test_unassociated_alpha_tiff_is_divided_once_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libtiff's 8-bit RGBA reader premultiplies unassociated colours; tifffile does not: both agree
    straight, _ = _rgba8()
    path = tmp_path / "unassoc.tif"
    tifffile.imwrite(path, straight, photometric="rgb", extrasamples=["unassalpha"])
    by_tifffile = imio.read_image(path)
    np.testing.assert_array_equal(by_tifffile.pixels, straight[..., :3])
    _no_tifffile_codec(monkeypatch)
    by_libtiff = imio.read_image(path)
    np.testing.assert_array_equal(by_libtiff.alpha, straight[..., 3])
    assert np.abs(by_libtiff.pixels[:2].astype(int) - _COLOUR).max() <= 1


@pytest.mark.parametrize("kind", ["rgba", "graya"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("full", [1.0, 255.0])
def test_float_tiff_alpha_is_kept_as_a_fraction(tmp_path: Path, kind: str, dtype: type, full: float) -> None:
    colours = 3 if kind == "rgba" else 1
    samples = np.zeros((3, 4, colours + 1), np.float32)
    samples[..., :colours] = np.array(_COLOUR[:colours]) / 255.0 * full
    samples[..., -1] = _ALPHA8[:, None] / 255.0 * full
    path = tmp_path / "f.tif"
    photometric = "rgb" if kind == "rgba" else "minisblack"
    tifffile.imwrite(path, samples.astype(dtype), photometric=photometric, extrasamples=["unassalpha"])

    loaded = imio.read_image(path)
    assert loaded.pixels.dtype == np.float32 and loaded.alpha is not None and loaded.alpha.dtype == np.float32
    expected = np.repeat((_ALPHA8 / 255.0)[:, None], 4, axis=1)
    np.testing.assert_allclose(loaded.alpha, expected, atol=1e-3)
    assert loaded.alpha[2].max() == 0.0  # transparent exactly


def test_hdr_float_colours_do_not_set_the_alpha_scale(tmp_path: Path) -> None:
    # colours up to 20 with a 0..1 alpha: the scale taken over colours and alpha together was 255,
    # and the cut-out all but transparent
    samples = np.zeros((3, 4, 4), np.float32)
    samples[..., :3] = 20.0
    samples[..., 3] = _ALPHA8[:, None] / 255.0
    tifffile.imwrite(tmp_path / "h.tif", samples, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_allclose(imio.read_image(tmp_path / "h.tif").alpha, samples[..., 3], atol=1e-6)


def test_wide_integer_associated_alpha_colours_are_left_as_stored(tmp_path: Path) -> None:
    # uint32 and int16 are read by their values, not their type's range: dividing by alpha over
    # the type's maximum turned the colours white; their alpha is not kept, the colours as stored
    samples = np.zeros((3, 4, 4), np.uint32)
    samples[..., :3] = _COLOUR
    samples[..., 3] = 128
    tifffile.imwrite(tmp_path / "u.tif", samples, photometric="rgb", extrasamples=["assocalpha"])
    loaded = imio.read_image(tmp_path / "u.tif")
    assert loaded.alpha is None
    np.testing.assert_array_equal(loaded.pixels.reshape(-1, 3)[0], _COLOUR)


def test_float_associated_alpha_is_unpremultiplied(tmp_path: Path) -> None:
    straight = np.zeros((3, 4, 4), np.float32)
    straight[..., :3] = np.array(_COLOUR) / 255.0
    straight[..., 3] = _ALPHA8[:, None] / 255.0
    premultiplied = straight.copy()
    premultiplied[..., :3] *= straight[..., 3:]
    tifffile.imwrite(tmp_path / "f.tif", premultiplied, photometric="rgb", extrasamples=["assocalpha"])
    loaded = imio.read_image(tmp_path / "f.tif")
    np.testing.assert_allclose(loaded.pixels[:2], straight[:2, :, :3], atol=1e-6)


def test_float_input_alpha_makes_transparent_cutouts_and_composites() -> None:
    pixels = np.full((3, 4, 3), 0.5, np.float32)
    byte_map = np.full((3, 4), 255, np.uint8)
    input_alpha = np.repeat((_ALPHA8 / 255.0).astype(np.float32)[:, None], 4, axis=1)
    rgba = T.cutout(pixels, byte_map, input_alpha)
    np.testing.assert_allclose(rgba[..., 3], input_alpha)  # full scale 1: the fraction itself
    assert rgba[2, :, 3].max() == 0.0
    over_white = T.composite(pixels, byte_map, (255, 255, 255), input_alpha)
    np.testing.assert_allclose(over_white[2], 1.0)  # transparent: the background
    np.testing.assert_allclose(over_white[0], 0.5)  # opaque: the image


# gray + alpha through libtiff: OpenCV reads a gray page as one channel, so its alpha cannot be had
# there; the loss is said, not silent. Columns are gray levels, rows alpha levels.
_GRAY8 = np.array([20, 100, 200, 255], np.uint8)
_GRAY_ALPHA8 = np.array([255, 128, 64, 0], np.uint8)
# _GRAY8 multiplied by each row's alpha (rounded): what a file with associated alpha stores
_GRAY8_PREMULTIPLIED = np.array(
    [[20, 100, 200, 255], [10, 50, 100, 128], [5, 25, 50, 64], [0, 0, 0, 0]], np.uint8
)


def _by_libtiff(path: Path, monkeypatch: pytest.MonkeyPatch) -> imio.LoadedImage:
    if importlib.util.find_spec("imagecodecs") is not None:  # tifffile would decode the LZW itself
        _no_tifffile_codec(monkeypatch)
    return imio.read_image(path)


def _gray_alpha(gray: np.ndarray, bits: int) -> np.ndarray:
    """(4, 4) 8-bit gray levels with the rows' :data:`_GRAY_ALPHA8` as (4, 4, 2) samples; 16 bits:
    each value times 257 (the same level, whose high byte is the 8-bit value)."""
    samples = np.stack([gray, np.repeat(_GRAY_ALPHA8[:, None], 4, axis=1)], axis=-1)
    return samples.astype(np.uint16) * np.uint16(257) if bits == 16 else samples


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


@pytest.mark.parametrize("bits", [8, 16])
def test_unassociated_gray_alpha_tiff_read_by_libtiff_says_its_alpha_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bits: int
) -> None:
    gray = np.repeat(_GRAY8[None, :], 4, axis=0)
    plain, lzw = gray_extra_tiffs(tmp_path, _gray_alpha(gray, bits), ["unassalpha"])
    dtype, scale = (np.uint16, 257) if bits == 16 else (np.uint8, 1)

    by_tifffile = imio.read_image(plain)
    assert by_tifffile.pixels.dtype == dtype and not by_tifffile.warnings
    np.testing.assert_array_equal(by_tifffile.pixels, _gray3(gray).astype(dtype) * dtype(scale))
    alpha = np.repeat(_GRAY_ALPHA8[:, None], 4, axis=1)
    np.testing.assert_array_equal(by_tifffile.alpha, alpha.astype(dtype) * dtype(scale))

    by_libtiff = _by_libtiff(lzw, monkeypatch)
    # the same gray as stored (libtiff does not multiply a gray page's colours), at 8 bits
    assert by_libtiff.pixels.dtype == np.uint8
    np.testing.assert_array_equal(by_libtiff.pixels, _gray3(gray))
    np.testing.assert_array_equal(by_libtiff.pixels, by_tifffile.pixels // dtype(scale))
    assert by_libtiff.alpha is None
    assert len(by_libtiff.warnings) == 1
    said = by_libtiff.warnings[0]
    assert said.startswith(f"{lzw}: its alpha (unassociated) is not read: read as opaque")
    assert ("at 8 bits instead of 16" in said) == (bits == 16)
    assert "multiplied" not in said and "pip install imagecodecs" in said


@pytest.mark.parametrize("bits", [8, 16])
def test_associated_gray_alpha_tiff_read_by_libtiff_says_its_gray_stays_premultiplied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bits: int
) -> None:
    plain, lzw = gray_extra_tiffs(tmp_path, _gray_alpha(_GRAY8_PREMULTIPLIED, bits), ["assocalpha"])

    by_tifffile = imio.read_image(plain)  # the gray divided by alpha; transparent stays 0
    straight = {
        8: [[20, 100, 200, 255], [20, 100, 199, 255], [20, 100, 199, 255], [0, 0, 0, 0]],
        16: [[5140, 25700, 51400, 65535], [5120, 25600, 51199, 65535], [5120, 25600, 51199, 65535], [0] * 4],
    }[bits]
    np.testing.assert_array_equal(by_tifffile.pixels, _gray3(np.array(straight)))
    assert by_tifffile.alpha is not None and not by_tifffile.warnings

    by_libtiff = _by_libtiff(lzw, monkeypatch)
    # no alpha to divide by: the gray as stored, equal to tifffile's where opaque (row 0) only
    assert by_libtiff.pixels.dtype == np.uint8 and by_libtiff.alpha is None
    np.testing.assert_array_equal(by_libtiff.pixels, _gray3(_GRAY8_PREMULTIPLIED))
    np.testing.assert_array_equal(by_libtiff.pixels[0], by_tifffile.pixels[0] // (257 if bits == 16 else 1))
    assert len(by_libtiff.warnings) == 1
    said = by_libtiff.warnings[0]
    assert said.startswith(
        f"{lzw}: its alpha (associated) is not read: read as opaque, its gray still multiplied by that alpha"
    )
    assert ("at 8 bits instead of 16" in said) == (bits == 16)


def test_gray_alpha_lost_to_libtiff_for_another_reason_offers_no_imagecodecs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gray = np.repeat(_GRAY8[None, :], 4, axis=0)
    plain, _ = gray_extra_tiffs(tmp_path, _gray_alpha(gray, 8), ["unassalpha"])

    def damaged(*args: object, **kwargs: object) -> None:
        raise ValueError("tifffile could not decode it")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", damaged)
    loaded = imio.read_image(plain)
    np.testing.assert_array_equal(loaded.pixels, _gray3(gray))
    assert loaded.alpha is None and len(loaded.warnings) == 1
    assert "is not read: read as opaque" in loaded.warnings[0]
    assert "imagecodecs" not in loaded.warnings[0]  # it would not help: tifffile has the codec


def test_a_min_is_white_gray_alpha_tiff_inverts_its_gray_not_its_alpha(tmp_path: Path) -> None:
    # MinIsWhite: 0 is white; the alpha sample counts as alpha whatever the photometric says
    gray = np.array([[10, 60, 200, 255]], np.uint8)
    alpha = np.array([[255, 255, 255, 128]], np.uint8)
    path = tmp_path / "w.tif"
    tifffile.imwrite(path, np.dstack([gray, alpha]), photometric="miniswhite", extrasamples=["unassalpha"])
    loaded = imio.read_image(path)
    np.testing.assert_array_equal(loaded.pixels[..., 0], [[245, 195, 55, 0]])
    np.testing.assert_array_equal(loaded.alpha, alpha)
    tifffile.imwrite(tmp_path / "g.tif", gray, photometric="miniswhite")  # the same gray, no alpha
    np.testing.assert_array_equal(imio.read_image(tmp_path / "g.tif").pixels, loaded.pixels)


def test_a_min_is_white_gray_tiff_with_associated_alpha_divides_before_inverting(tmp_path: Path) -> None:
    # the ink (0 white) is stored multiplied by alpha: divided back first, then counted from white
    ink = np.array([[0, 255, 128, 255]], np.uint8)
    alpha = np.array([[128, 128, 128, 255]], np.uint8)
    stored = np.rint(ink.astype(float) * alpha / 255).astype(np.uint8)
    path = tmp_path / "w.tif"
    tifffile.imwrite(path, np.dstack([stored, alpha]), photometric="miniswhite", extrasamples=["assocalpha"])
    loaded = imio.read_image(path)
    np.testing.assert_array_equal(loaded.pixels[..., 0], [[255, 0, 127, 0]])
    np.testing.assert_array_equal(loaded.alpha, alpha)
