"""Decoding corner cases an audit found misread: float range, PNM maxval, TIFF pages, colour
spaces and codecs, content sniffing, signed samples, long output names (tiny images, no model)."""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from helpers import gray_extra_tiffs

from pdseg_cli.data import atomic, native_messages
from pdseg_cli.data import images as imio
from pdseg_cli.data import transforms as T
from pdseg_cli.data.header import image_size, pnm_header
from pdseg_cli.errors import InputError

H, W = 20, 30


def _gradient(h: int = H, w: int = W) -> np.ndarray:
    """(h, w, 3) uint8 RGB with every channel different, so colour mistakes show."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), 255 - xx * 255 // (w - 1)], 2).astype(np.uint8)


def _patch_tag(path: Path, code: int, value: int) -> None:
    """Overwrite a SHORT tag's value in place (a tag tifffile will not write, e.g. ZSTD or ITULab)."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[code]
        offset, order = tag.valueoffset, tif.byteorder
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(f"{order}H", value))


# ------------------------------------------------------------------------ 1. float images' range


def test_a_float_image_with_a_few_samples_over_one_is_still_0_to_1(tmp_path: Path) -> None:
    img = _gradient().astype(np.float32) / 255
    img[0, 0] = 1.02  # one overshoot, as linear and HDR scans have
    assert T.float_range(img) == 1.0 and T.full_scale(img) == 1.0
    x = T.to_float_rgb(img)
    np.testing.assert_allclose(x[1:], img[1:] * 255, atol=1e-3)
    assert x.max() == 255.0  # the overshoot is clipped for the model
    # read from a TIFF, the same; cut-outs and composites stay on 0..1
    tifffile.imwrite(tmp_path / "hdr.tif", img, photometric="rgb")
    pixels = imio.read_image(tmp_path / "hdr.tif").pixels
    m = np.full((H, W), 255, np.uint8)
    m[:, :5] = 0
    rgba = T.cutout(pixels, m)
    assert rgba.dtype == np.float32 and rgba[..., 3].max() == 1.0
    comp = T.composite(pixels, m, (255, 255, 255))
    np.testing.assert_allclose(comp[:, :5], 1.0)  # the white background at the image's own white


def test_float_range_rule() -> None:
    hdr = np.full((40, 40), 0.5, np.float32)
    hdr[:10] = 2.5  # a quarter of the image two stops over white: still a 0..1 image
    assert T.float_range(hdr) == 1.0
    eight = np.linspace(0, 255, 1600, dtype=np.float32).reshape(40, 40)
    assert T.float_range(eight) == 255.0
    eight[0, 0] = 70000.0  # one stray sample does not make it a 16-bit image
    assert T.float_range(eight) == 255.0
    assert T.float_range(np.linspace(0, 60000, 1600, dtype=np.float32)) == 65535.0
    assert T.float_range(np.full((2, 2), np.nan, np.float32)) == 1.0
    # a thumbnail with one stray sample: the percentile would be that sample
    thumb = np.full((2, 5), 0.5, np.float32)
    thumb[0, 0] = 100.0
    assert T.float_range(thumb) == 1.0
    assert T.float_range(np.zeros((0, 5), np.float32)) == 1.0  # empty
    # over 2**20 samples, whole pixels are sampled: a stride over the flat samples hit only the red
    # channel of a 1024x1024 RGB image (1024 * 1024 * 3 // 2**20 = 3)
    colours = np.empty((1024, 1024, 3), np.float32)
    colours[..., 0], colours[..., 1], colours[..., 2] = 0.5, 100.0, 200.0
    assert T.float_range(colours) == 255.0
    stripes = np.zeros((1024, 2048), np.float32)
    stripes[:, 1::2] = 200.0  # the odd columns only
    assert T.float_range(stripes) == 255.0


# ------------------------------------------------------------------------------ 2. PNM maxval


def test_pgm_and_ppm_are_scaled_by_their_maxval(tmp_path: Path) -> None:
    twelve = np.array([[0, 1024, 2047, 4095]], dtype=">u2")
    (tmp_path / "scan.pgm").write_bytes(b"P5\n# CREATOR: a scanner\n4 1\n4095\n" + twelve.tobytes())
    got = imio.read_image(tmp_path / "scan.pgm").pixels
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got[0, :, 0], np.rint(twelve[0].astype(float) * 65535 / 4095))
    hundred = np.array([[[0, 50, 100]]], np.uint8)
    (tmp_path / "low.ppm").write_bytes(b"P6 1 1 100\n" + hundred.tobytes())
    np.testing.assert_array_equal(imio.read_image(tmp_path / "low.ppm").pixels, [[[0, 128, 255]]])  # 127.5
    # the ASCII kinds, which OpenCV scales to 8 bits itself below maxval 256 (not twice)
    (tmp_path / "ascii.pgm").write_bytes(b"P2\n3 1\n100\n0 50 100\n")
    assert imio.read_image(tmp_path / "ascii.pgm").pixels[0, :, 0].tolist() == [0, 127, 255]  # OpenCV floors
    (tmp_path / "ascii.ppm").write_bytes(b"P3\n2 1\n15\n8 8 8 15 0 0\n")
    assert imio.read_image(tmp_path / "ascii.ppm").pixels[0].tolist() == [[136, 136, 136], [255, 0, 0]]
    (tmp_path / "ascii16.pgm").write_bytes(b"P2\n2 1\n4095\n0 4095\n")
    assert imio.read_image(tmp_path / "ascii16.pgm").pixels[0, :, 0].tolist() == [0, 65535]


def test_pnm_headers_are_read_for_max_pixels(tmp_path: Path) -> None:
    assert pnm_header(b"P5 # c\n# more\n300\t200\n4095\n") is not None
    assert pnm_header(b"P5\n300 200\n4095\n").maxval == 4095  # type: ignore[union-attr]
    assert pnm_header(b"P4\n8 2\n").maxval == 1  # type: ignore[union-attr]
    assert pnm_header(b"P5\n300") is None and pnm_header(b"PNG") is None
    path = tmp_path / "big.pgm"
    path.write_bytes(b"P5\n# claims far more than it holds\n40000 40000\n255\n" + bytes(64))
    assert image_size(path) == (40000, 40000)
    with pytest.raises(InputError, match="over the limit") as err:
        imio.read_image(path, max_pixels=1000)
    assert err.value.hint is not None and "--max-pixels" in err.value.hint


# ------------------------------------------------------------------ 3. reduced-resolution pages


def test_a_preview_page_before_the_image_is_passed_over(tmp_path: Path) -> None:
    full = _gradient()
    path = tmp_path / "scan.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(full[::4, ::4], photometric="rgb", subfiletype=1)  # a reduced-resolution preview
        tif.write(full, photometric="rgb")
    got = imio.read_image(path)
    np.testing.assert_array_equal(got.pixels, full)
    assert image_size(path) == (W, H)  # --max-pixels looks at the page that is decoded
    assert got.warnings and "page 2 is used" in got.warnings[0] and "preview" in got.warnings[0]


# ------------------------------------------------------------------------------- 4. colour spaces


@pytest.mark.parametrize("bits", [8, 16])
def test_cielab_tiffs_are_converted_to_rgb(tmp_path: Path, bits: int) -> None:
    rgb = _gradient()
    if bits == 8:  # OpenCV's 8-bit Lab is L * 255 / 100, a + 128, b + 128; a TIFF's a and b are signed
        lab8 = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
        stored = lab8.copy()
        stored[..., 1:] = (lab8[..., 1:].astype(np.int16) - 128).astype(np.int8).view(np.uint8)
        want = cv2.cvtColor(lab8, cv2.COLOR_Lab2RGB).astype(np.int64)  # 8-bit Lab loses a little itself
        tolerance = 2
    else:
        lab = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
        stored = np.dstack([np.rint(lab[..., 0] * 655.35).astype(np.uint16).view(np.int16),
                            np.rint(lab[..., 1:] * 256).astype(np.int16)])  # fmt: skip
        want, tolerance = rgb.astype(np.int64) * 257, 3 * 257
    tifffile.imwrite(tmp_path / "lab.tif", stored, photometric="cielab")
    got = imio.read_image(tmp_path / "lab.tif").pixels
    assert got.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert np.abs(got.astype(np.int64) - want).max() <= tolerance


def test_uncompressed_ycbcr_is_converted_by_libtiff(tmp_path: Path) -> None:
    rgb = _gradient()
    ycbcr = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., [0, 2, 1]]
    tifffile.imwrite(tmp_path / "ycc.tif", ycbcr, photometric="ycbcr", subsampling=(1, 1))
    got = imio.read_image(tmp_path / "ycc.tif").pixels
    assert np.abs(got.astype(int) - rgb.astype(int)).max() <= 3


def test_a_colour_space_pdseg_does_not_convert_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "itu.tif"
    tifffile.imwrite(path, _gradient(), photometric="rgb")
    _patch_tag(path, 262, 10)  # Photometric: ITULab
    with pytest.raises(InputError, match="ITULAB colour space") as err:
        imio.read_image(path)
    assert err.value.hint is not None and "convert it to RGB" in err.value.hint
    inks = tmp_path / "inks.tif"
    not_cmyk = [(332, "H", 1, 2, True)]  # InkSet 2: inks other than cyan, magenta, yellow, black
    tifffile.imwrite(inks, np.zeros((H, W, 4), np.uint8), photometric="separated", extratags=not_cmyk)
    with pytest.raises(InputError, match=r"separated \(4 inks, not CMYK\) colour space"):
        imio.read_image(inks)


# ---------------------------------------------------------------------------------- 5. codecs


def test_a_missing_codec_says_to_install_imagecodecs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "zstd.tif"
    tifffile.imwrite(path, _gradient(), photometric="rgb")
    _patch_tag(path, 259, 50000)  # Compression: ZSTD (the data stays raw: no decoder reads it)

    def no_zstd(self: object, *args: object, **kwargs: object) -> None:
        # what tifffile raises for ZSTD without imagecodecs, on any Python and whatever is installed
        raise ModuleNotFoundError("No module named 'compression'", name="compression")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_zstd)
    with pytest.raises(InputError) as err:
        imio.read_image(path)
    assert "its ZSTD compression needs the optional imagecodecs package" in err.value.message
    assert err.value.hint == "pip install imagecodecs"


# ------------------------------------------------------------------- 7. the reader by content


def test_the_reader_follows_the_content_not_the_name(tmp_path: Path) -> None:
    rgb = _gradient()
    assert cv2.imwrite(str(tmp_path / "real.png"), rgb[..., ::-1])
    (tmp_path / "png.tif").write_bytes((tmp_path / "real.png").read_bytes())
    np.testing.assert_array_equal(imio.read_image(tmp_path / "png.tif").pixels, rgb)
    assert cv2.imwrite(str(tmp_path / "real.jpg"), rgb[..., ::-1])
    (tmp_path / "jpeg.tiff").write_bytes((tmp_path / "real.jpg").read_bytes())
    assert imio.read_image(tmp_path / "jpeg.tiff").size == (H, W)
    # still unreadable: the message says what the file really is
    (tmp_path / "cut.tif").write_bytes((tmp_path / "real.png").read_bytes()[:60])
    with pytest.raises(InputError, match=r"a PNG file named \.tif, corrupt or truncated"):
        imio.read_image(tmp_path / "cut.tif")
    (tmp_path / "text.tif").write_bytes(b"hello, not an image")
    with pytest.raises(InputError, match="a text file, not an image: it starts 'hello, not an image'"):
        imio.read_image(tmp_path / "text.tif")


# ------------------------------------------------------------------------------ 8. signed samples


def test_signed_16bit_tiffs_are_full_at_32767(tmp_path: Path) -> None:
    values = np.array([[0, 16384, 32767, -5]], np.int16)
    tifffile.imwrite(tmp_path / "s.tif", values, photometric="minisblack")
    got = imio.read_image(tmp_path / "s.tif").pixels
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got[0, :, 0], [0, 32768, 65535, 0])  # negatives clipped to black
    assert imio.to_rgb(np.array([[127, -1]], np.int8))[0, :, 0].tolist() == [255, 0]
    assert imio.to_rgb(np.array([[127, 0]], np.int8))[0, :, 0].tolist() == [255, 0]  # int8 is full at 127
    # 8-bit data kept in int16 stays 8-bit, as in every wider integer type
    eight = imio.to_rgb(np.array([[0, 255]], np.int16))
    assert eight.dtype == np.uint8 and eight[0, :, 0].tolist() == [0, 255]


# ---------------------------------------------------------------------------- 9. long names


@pytest.mark.parametrize("stem", ["a" * 250, "é" * 125])  # 254 bytes with .png: the most most folders take
def test_an_output_name_near_name_max_can_be_written(tmp_path: Path, stem: str) -> None:
    target = tmp_path / f"{stem}.png"
    try:
        target.write_bytes(b"")  # the file system itself must take the name
    except OSError:
        pytest.skip("this file system takes shorter names")
    target.unlink()
    name = atomic.temp_name(target)
    assert len(os.fsencode(name)) <= 255 and name.startswith(".") and name.endswith(atomic.TEMP_SUFFIX)
    imio.write_png(target, _gradient())
    np.testing.assert_array_equal(cv2.imread(str(target))[..., ::-1], _gradient())
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left behind


# ---------------------------------------------------------------- a TIFF cut before its first page


def test_a_tiff_cut_before_its_first_page_is_named_and_tifffile_says_nothing_bare(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cut.tif"
    path.write_bytes(
        b"II*\x00" + (1000).to_bytes(4, "little") + bytes(8)
    )  # the first page at 1000, past the end
    with pytest.raises(InputError, match="cut.tif: a TIFF whose first page cannot be found") as err:
        imio.read_image(path)
    assert "invalid offset to first page 1000" in err.value.message and "<tifffile" not in err.value.message
    assert err.value.hint is not None and "complete" in err.value.hint
    assert "invalid offset" not in capfd.readouterr().err  # not printed bare by Python's logging


# ------------------------------------------------- 10. gray with extra samples that are not alpha


def _no_imagecodecs(monkeypatch: pytest.MonkeyPatch) -> None:
    """tifffile as it is without imagecodecs, where imagecodecs is installed: LZW goes to libtiff."""

    def no_codec(*args: object, **kwargs: object) -> None:
        raise KeyError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codec)


def test_16bit_gray_with_an_unspecified_extra_sample_says_libtiff_read_it_at_8_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gray = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000 + 7  # low bytes that 8 bits lose
    samples = np.stack([gray, 65535 - gray], axis=-1)  # ExtraSamples 0: a sample of no stated meaning
    plain, lzw = gray_extra_tiffs(tmp_path, samples, [0])

    whole = imio.read_image(plain)  # tifffile: every bit, and the extra sample is not alpha
    assert whole.pixels.dtype == np.uint16 and not whole.warnings and whole.alpha is None
    np.testing.assert_array_equal(whole.pixels, np.repeat(gray[..., None], 3, axis=2))

    _no_imagecodecs(monkeypatch)
    by_libtiff = imio.read_image(lzw)
    assert by_libtiff.pixels.dtype == np.uint8 and by_libtiff.alpha is None
    assert np.abs(by_libtiff.pixels.astype(int) - whole.pixels // 257).max() <= 1  # the same, at 8 bits
    assert by_libtiff.warnings == [
        f"{lzw}: its 16-bit gray is read at 8 bits (this TIFF is decoded by libtiff, which reads gray "
        "with an extra sample at 8 bits; pip install imagecodecs reads it whole)"
    ]


def test_an_8bit_gray_with_an_unspecified_extra_sample_loses_nothing_and_says_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 15
    _, lzw = gray_extra_tiffs(tmp_path, np.stack([gray, 255 - gray], axis=-1), [0])
    _no_imagecodecs(monkeypatch)
    loaded = imio.read_image(lzw)
    assert not loaded.warnings
    np.testing.assert_array_equal(loaded.pixels, np.repeat(gray[..., None], 3, axis=2))


def test_gray_with_several_extra_samples_is_read_as_gray_or_refused_never_mixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gray = np.arange(9, dtype=np.uint16).reshape(3, 3) * 5000 + 1
    samples = np.stack([gray, gray // 2, 65535 - gray], axis=-1)
    plain, lzw = gray_extra_tiffs(tmp_path, samples, [0, 0])
    # tifffile: the gray alone (the two extra samples were read as green and blue)
    np.testing.assert_array_equal(imio.read_image(plain).pixels, np.repeat(gray[..., None], 3, axis=2))
    _no_imagecodecs(monkeypatch)
    with pytest.raises(InputError) as err:  # libtiff gives their luminance: refused, not misread
        imio.read_image(lzw)
    assert err.value.message == (
        f"{lzw}: cannot read this 16-bit gray TIFF with 2 extra samples: its LZW compression is decoded "
        "here by libtiff, which would mix the extra samples into the gray"
    )
    assert err.value.hint == "pip install imagecodecs"


@pytest.mark.parametrize(("suffix", "kind"), [(".png", "PNG"), (".webp", "WebP")])
def test_an_animation_is_read_from_its_first_frame_and_said(tmp_path: Path, suffix: str, kind: str) -> None:
    from PIL import Image, features

    if kind == "WebP" and not features.check("webp"):
        pytest.skip("this Pillow writes no WebP")
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((200, 10, 10), (10, 200, 10), (10, 10, 200))]
    path = tmp_path / f"anim{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    loaded = imio.read_image(path)
    assert loaded.warnings == [f"{path}: animated {kind} (3 frames), the first frame is used"]
    assert tuple(int(v) for v in loaded.pixels[15, 20]) == (200, 10, 10)
    still = tmp_path / f"still{suffix}"
    frames[0].save(still, lossless=True)
    assert imio.read_image(still).warnings == []  # a still image says nothing


# ------------------------------------------------------------------------ files without their end marker

_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", 0xAE426082)  # the empty chunk and its CRC
_NO_END = "no end marker (the file ends early, but every row is there); decoded anyway"


def _textured(h: int = 48, w: int = 64) -> np.ndarray:
    """Random colours with some structure: every scan and IDAT chunk has work to do."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] //= 3
    return rgb


def _jpeg(progressive: bool) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_textured()).save(buf, "JPEG", quality=90, progressive=progressive)
    return buf.getvalue()


@pytest.fixture(params=[False, True], ids=["api", "command"])
def routed(request: pytest.FixtureRequest) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """Read as the Python API does (no decoder messages) and as the pdseg command does (libjpeg's
    and libpng's messages come back to the decode): a context to enter in the test's body. Not
    entered here: pytest's capture then replaced fd 2 under the router, whose marks never reached
    its pipe, so every decode waited out the router's timeout (2 s) and no message was routed."""
    from pdseg_cli.data import native_messages

    return native_messages.routed if request.param else contextlib.nullcontext


Routed = Callable[[], contextlib.AbstractContextManager[None]]


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("cut", [2, 1], ids=["no-FFD9", "no-D9"])
def test_a_jpeg_without_its_end_marker_reads_whole_with_a_warning(
    tmp_path: Path, progressive: bool, cut: int, routed: Routed, capfd: pytest.CaptureFixture[str]
) -> None:
    data = _jpeg(progressive)
    assert data.endswith(b"\xff\xd9")
    (tmp_path / "whole.jpg").write_bytes(data)
    (tmp_path / "noeoi.jpg").write_bytes(data[:-cut])
    with routed():
        whole, cut_short = imio.read_image(tmp_path / "whole.jpg"), imio.read_image(tmp_path / "noeoi.jpg")
    np.testing.assert_array_equal(cut_short.pixels, whole.pixels)
    assert whole.warnings == []
    assert cut_short.warnings == [f"{tmp_path / 'noeoi.jpg'}: {_NO_END}"]
    if routed is native_messages.routed:  # the command: libjpeg's lines go to the decode, not the terminal
        assert "JPEG" not in capfd.readouterr().err


def test_a_png_without_iend_reads_whole_with_a_warning(tmp_path: Path, routed: Routed) -> None:
    for name, pixels in (("rgb", _textured()), ("gray16", _textured()[..., 0].astype(np.uint16) * 257)):
        data = imio.encode_png(pixels)
        assert data.endswith(_IEND)
        (tmp_path / f"{name}.png").write_bytes(data[: -len(_IEND)])
        with routed():
            loaded = imio.read_image(tmp_path / f"{name}.png")
        np.testing.assert_array_equal(loaded.pixels[..., 0], pixels if pixels.ndim == 2 else pixels[..., 0])
        np.testing.assert_array_equal(loaded.pixels, imio.to_rgb(pixels))
        assert loaded.warnings == [f"{tmp_path / f'{name}.png'}: {_NO_END}"]


@pytest.mark.parametrize("cut", [4, 8, 11], ids=["no-crc", "length-only", "one-byte-left"])
def test_a_png_whose_iend_is_cut_part_way_reads_alike_in_the_api_and_the_command(
    tmp_path: Path, cut: int, routed: Routed
) -> None:
    """The API took one without IEND's CRC (libpng's CRC warning unheard), the command refused it."""
    pixels = _textured()
    (tmp_path / "p.png").write_bytes(imio.encode_png(pixels)[:-cut])
    with routed():
        loaded = imio.read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.warnings == [f"{tmp_path / 'p.png'}: {_NO_END}"]


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_a_jpeg_cut_inside_its_image_data_is_still_refused(
    tmp_path: Path, progressive: bool, routed: Routed
) -> None:
    data = _jpeg(progressive)
    sos = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    cuts = {"half": len(data) // 2, "late": len(data) - 40}
    if progressive:  # between two scans: libjpeg decodes that cleanly, blurred
        cuts["between-scans"] = sos[len(sos) // 2]
    for name, at in cuts.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data[:at])
        with routed(), pytest.raises(InputError, match="cannot decode \\(corrupt or truncated JPEG file\\)"):
            imio.read_image(path)


def test_a_png_cut_inside_its_image_data_is_still_refused(tmp_path: Path, routed: Routed) -> None:
    data = imio.encode_png(np.tile(_textured(), (4, 4, 1)))
    chunks, i = [], 8
    while i < len(data):  # where each chunk ends
        i += 12 + struct.unpack(">I", data[i : i + 4])[0]
        chunks.append(i)
    assert len(chunks) > 3  # IHDR, several IDAT, IEND
    for name, at in {"half": len(data) // 2, "between-idat": chunks[len(chunks) // 2]}.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(data[:at])
        with routed(), pytest.raises(InputError, match="cannot decode \\(corrupt or truncated PNG file\\)"):
            imio.read_image(path)


def test_the_end_marker_retry_is_for_jpeg_and_png_only(tmp_path: Path) -> None:
    ok, buf = cv2.imencode(".bmp", _textured())
    assert ok
    path = tmp_path / "cut.bmp"
    path.write_bytes(buf.tobytes()[:-100])
    with pytest.raises(InputError, match="cannot decode"):
        imio.read_image(path)
    assert imio.decode_lacking_end_marker(buf.tobytes()[:-100], cv2.IMREAD_COLOR) is None


def test_eval_and_training_read_a_mask_without_its_end_marker(tmp_path: Path) -> None:
    """GTs, predictions and training masks go through metrics.reading, which decoded on its own."""
    from pdseg_cli.metrics.reading import read_mask_file

    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 5:45] = 255
    ok, buf = cv2.imencode(".png", mask)
    assert ok and buf.tobytes().endswith(_IEND)
    (tmp_path / "gt.png").write_bytes(buf.tobytes()[: -len(_IEND)])
    read = read_mask_file(tmp_path / "gt.png")
    np.testing.assert_array_equal(read.array, mask)
    assert read.decoder_said == (_NO_END,)  # eval notes it as a damaged file, and scores it
    (tmp_path / "half.png").write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(InputError, match="cannot decode"):
        read_mask_file(tmp_path / "half.png")


def test_a_tiff_whose_strips_no_decoder_reads_is_refused_not_read_as_black(tmp_path: Path) -> None:
    """libtiff answers strips of an unknown compression with an error and an all-zero image, which
    was segmented with a "decoded anyway" warning: a mask of a black picture, status done."""
    tifffile.imwrite(tmp_path / "ok.tif", np.random.default_rng(0).integers(1, 255, (48, 64, 3), np.uint8))
    with tifffile.TiffFile(tmp_path / "ok.tif") as tif:
        where = tif.pages[0].tags["Compression"].valueoffset
    data = bytearray((tmp_path / "ok.tif").read_bytes())
    struct.pack_into("<H", data, where, 34999)  # no codec has this number
    (tmp_path / "unknown.tif").write_bytes(data)
    said = r"unknown\.tif: cannot decode this TIFF: its compression, 34999, is one no reader knows"
    with pytest.raises(InputError, match=said):
        imio.read_image(tmp_path / "unknown.tif")
    # any format, in the command (which hears the decoders): one that complained and gave only
    # zeros decoded nothing
    with native_messages.routed():
        with pytest.raises(InputError, match=r"cannot decode \(every pixel came out 0\); the decoder said: "):
            imio._read_cv2(tmp_path / "unknown.tif", [])
    # a TIFF only: a black JPEG with a stray byte (an empty GT with libpng's sRGB warning) is an image
    jpeg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    sos = jpeg.index(b"\xff\xda")
    (tmp_path / "black.jpg").write_bytes(jpeg[:sos] + b"\x00\x00\x00" + jpeg[sos:])
    with native_messages.routed():
        said: list[str] = []
        assert not imio._read_cv2(tmp_path / "black.jpg", said).any()
    assert said and "Corrupt JPEG data" in said[0]


def test_float64_beyond_float32s_range_stays_finite_and_in_proportion(tmp_path: Path) -> None:
    """The cast to float32 made such values infinite, printed numpy's overflow warning with its
    source line, and then said that pixels finite in the file were NaN or infinite."""
    values = np.random.default_rng(0).random((20, 30, 3)) * 1e300
    tifffile.imwrite(tmp_path / "huge.tif", values, photometric="rgb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = imio.read_image(tmp_path / "huge.tif")
    assert read.warnings == []
    np.testing.assert_allclose(read.pixels, (values / values.max()).astype(np.float32), rtol=1e-6)


def test_tiff_tags_that_contradict_each_other_are_said_so(tmp_path: Path) -> None:
    """A tile width of 0 was "cannot read as TIFF (ZeroDivisionError: division by zero)", no hint."""
    tifffile.imwrite(
        tmp_path / "tiled.tif", np.full((32, 32, 3), 7, np.uint8), tile=(16, 16), photometric="rgb"
    )
    with tifffile.TiffFile(tmp_path / "tiled.tif") as tif:
        where = tif.pages[0].tags["TileWidth"].valueoffset
    data = bytearray((tmp_path / "tiled.tif").read_bytes())
    struct.pack_into("<I", data, where, 0)
    (tmp_path / "tile0.tif").write_bytes(data)
    with pytest.raises(InputError) as info:
        imio.read_image(tmp_path / "tile0.tif")
    assert info.value.message == (
        f"{tmp_path / 'tile0.tif'}: cannot read as TIFF: its tags are damaged or contradict each other "
        "(ZeroDivisionError: division by zero)"
    )
    assert (
        info.value.hint
        == "check that the file is complete (copy it again); if it opens elsewhere, save it again"
    )
