"""Reading every supported image kind, the pure transforms, and atomic writes (no model needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from pdseg_cli.data import atomic
from pdseg_cli.data import images as imio
from pdseg_cli.data import transforms as T
from pdseg_cli.data.colors import parse_color
from pdseg_cli.errors import InputError

H, W = 13, 21  # odd on purpose


def _rgb8(h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rgb16(h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)


def _write_cv2(path: Path, rgb: np.ndarray) -> Path:
    arr = rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        arr = rgb[..., [2, 1, 0, 3]]
    assert cv2.imwrite(str(path), np.ascontiguousarray(arr))
    return path


# --------------------------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_rgb_gray_rgba_keep_bit_depth(tmp_path: Path, dtype: type) -> None:
    rgb = _rgb8() if dtype == np.uint8 else _rgb16()
    got = imio.read_image(_write_cv2(tmp_path / "rgb.png", rgb))
    assert got.pixels.dtype == dtype and got.pixels.shape == (H, W, 3)
    np.testing.assert_array_equal(got.pixels, rgb)

    gray = rgb[..., 0]
    got = imio.read_image(_write_cv2(tmp_path / "gray.png", gray)).pixels
    assert got.dtype == dtype and got.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], gray)

    alpha = np.zeros((H, W, 1), dtype)  # fully transparent: the colours must still come through
    got = imio.read_image(_write_cv2(tmp_path / "rgba.png", np.concatenate([rgb, alpha], 2))).pixels
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, rgb)


def test_png_gray_alpha_and_palette(tmp_path: Path) -> None:
    from PIL import Image

    gray = _rgb8()[..., 0]
    Image.fromarray(np.dstack([gray, np.full_like(gray, 7)]), "LA").save(tmp_path / "la.png")
    got = imio.read_image(tmp_path / "la.png").pixels
    np.testing.assert_array_equal(got[..., 1], gray)
    Image.fromarray(_rgb8()).convert("P").save(tmp_path / "p.png")
    assert imio.read_image(tmp_path / "p.png").pixels.shape == (H, W, 3)


# -------------------------------------------------------------------------------- JPEG, BMP, WebP


def test_jpeg_rgb_and_gray(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :10] = (200, 30, 10)
    got = imio.read_image(_write_cv2(tmp_path / "a.jpg", rgb)).pixels
    assert got.shape == (H, W, 3) and got.dtype == np.uint8
    assert np.abs(got[5, 2].astype(int) - (200, 30, 10)).max() < 12  # RGB order, not BGR
    got = imio.read_image(_write_cv2(tmp_path / "g.jpeg", rgb[..., 0])).pixels
    assert got.shape == (H, W, 3)
    assert (got[..., 0] == got[..., 2]).all()


def test_jpeg_exif_orientation_applied(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.zeros((10, 30, 3), np.uint8)
    rgb[:, :5] = 255  # a white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    got = imio.read_image(tmp_path / "r.jpg").pixels
    assert got.shape == (30, 10, 3)  # displayed upright: width and height swapped
    assert got[:5].mean() > 200 and got[-5:].mean() < 50  # the band is now at the top


def test_cmyk_jpeg_converted(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:] = (200, 50, 10)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    got = imio.read_image(tmp_path / "c.jpg").pixels
    assert got.shape == (H, W, 3)
    assert np.abs(got[5, 5].astype(int) - (200, 50, 10)).max() <= 3


def test_bmp_and_lossless_webp(tmp_path: Path) -> None:
    rgb = _rgb8()
    np.testing.assert_array_equal(imio.read_image(_write_cv2(tmp_path / "a.bmp", rgb)).pixels, rgb)
    path = tmp_path / "a.webp"
    assert cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 101])  # > 100: lossless
    np.testing.assert_array_equal(imio.read_image(path).pixels, rgb)


# -------------------------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("rgb8", {}),
        ("planar16", {"planarconfig": "separate"}),
        ("bigtiff_zlib16", {"bigtiff": True, "compression": "zlib"}),
    ],
)
def test_tiff_layouts(tmp_path: Path, name: str, kwargs: dict) -> None:
    rgb = _rgb8() if name == "rgb8" else _rgb16()
    data = np.moveaxis(rgb, -1, 0) if kwargs.get("planarconfig") == "separate" else rgb
    tifffile.imwrite(tmp_path / f"{name}.tif", data, photometric="rgb", **kwargs)
    got = imio.read_image(tmp_path / f"{name}.tif")
    assert got.pixels.dtype == rgb.dtype and not got.warnings
    np.testing.assert_array_equal(got.pixels, rgb)


def test_tiff_rgba16_gray_float_and_cmyk(tmp_path: Path) -> None:
    rgb = _rgb16()
    rgba = np.concatenate([rgb, np.zeros((H, W, 1), np.uint16)], 2)
    tifffile.imwrite(tmp_path / "rgba.tiff", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(imio.read_image(tmp_path / "rgba.tiff").pixels, rgb)

    gray = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    tifffile.imwrite(tmp_path / "f.tif", gray)
    got = imio.read_image(tmp_path / "f.tif").pixels
    assert got.dtype == np.float32 and got.shape == (H, W, 3)
    np.testing.assert_array_equal(got[..., 1], gray)

    cmyk = np.zeros((H, W, 4), np.uint8)
    cmyk[..., 0] = 255  # full cyan -> (0, 255, 255)
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    np.testing.assert_array_equal(imio.read_image(tmp_path / "cmyk.tif").pixels[0, 0], (0, 255, 255))


def test_multipage_tiff_first_page_with_warning(tmp_path: Path) -> None:
    a, b = _rgb8(), _rgb8()[::-1].copy()
    tifffile.imwrite(tmp_path / "m.tif", np.stack([a, b]), photometric="rgb")
    got = imio.read_image(tmp_path / "m.tif")
    np.testing.assert_array_equal(got.pixels, a)
    assert got.warnings and got.warnings[0].startswith(f"{tmp_path / 'm.tif'}: multi-page")


def test_float_tiff_non_finite_samples_are_zero_with_a_warning(tmp_path: Path) -> None:
    a = np.full((6, 5, 3), 0.5, np.float32)
    a[0, 0, 0], a[1, 1] = np.nan, np.inf
    a[2, 2, 2] = -np.inf
    tifffile.imwrite(tmp_path / "f.tif", a, photometric="rgb")
    got = imio.read_image(tmp_path / "f.tif")
    assert got.pixels.dtype == np.float32 and np.isfinite(got.pixels).all()
    want = a.copy()
    want[0, 0, 0], want[1, 1], want[2, 2, 2] = 0.0, 0.0, 0.0
    np.testing.assert_array_equal(got.pixels, want)
    assert got.warnings == [f"{tmp_path / 'f.tif'}: 3 pixels are NaN or infinite; read as 0"]
    gray = np.full((6, 5), 0.5, np.float32)
    gray[0, :2] = np.nan  # 2 pixels, not the 6 samples of their RGB reading
    tifffile.imwrite(tmp_path / "g.tif", gray)
    assert imio.read_image(tmp_path / "g.tif").warnings == [
        f"{tmp_path / 'g.tif'}: 2 pixels are NaN or infinite; read as 0"
    ]


# ------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("name", ["bad.png", "bad.jpg", "bad.tif", "empty.webp"])
def test_corrupt_file_raises_input_error_naming_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else b"\x89PNG\r\n\x1a\n not really an image")
    with pytest.raises(InputError, match=name + (": the file is empty" if name.startswith("empty") else "")):
        imio.read_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        imio.read_image(tmp_path / "nope.png")


# ------------------------------------------------------------------------------------- transforms


def test_to_float_rgb_ranges() -> None:
    assert T.to_float_rgb(np.full((2, 2, 3), 255, np.uint8)).max() == 255.0
    assert T.to_float_rgb(np.full((2, 2, 3), 65535, np.uint16)).max() == 255.0
    # other integer types go by their values: an int64 copy of an 8-bit image is that image
    eight = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    for dtype in (np.int16, np.int32, np.int64, np.uint32):
        np.testing.assert_array_equal(T.to_float_rgb(eight.astype(dtype)), T.to_float_rgb(eight))
    np.testing.assert_array_equal(T.to_float_rgb(eight.astype(np.int32) * 257), T.to_float_rgb(eight))
    # a dark 8-bit photo (values up to 3) in an int64 array stays dark: integers are never 0..1
    dark = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) % 4
    for dtype in (np.int16, np.int64, np.uint32):
        np.testing.assert_array_equal(T.to_float_rgb(dark.astype(dtype)), T.to_float_rgb(dark))
    assert T.to_float_rgb(np.full((2, 2), 1.0, np.float32)).shape == (2, 2, 3)
    assert T.to_float_rgb(np.full((2, 2, 3), 1.0, np.float64)).max() == 255.0
    assert T.to_float_rgb(np.full((2, 2, 3), 200.0, np.float32)).max() == 200.0  # 0..255 floats
    assert T.to_float_rgb(np.ones((2, 2, 4), bool)).shape == (2, 2, 3)
    with pytest.raises(ValueError):
        T.to_float_rgb(np.zeros((2, 2, 5), np.uint8))


def test_quantize_is_dis_truncation() -> None:
    p = np.array([0.0, 0.5 / 255, 1.0 / 255, 0.5, 254.9 / 255, 1.0], np.float32)
    np.testing.assert_array_equal(T.quantize(p), np.floor(p * np.float32(255)).astype(np.uint8))
    assert T.quantize(p).tolist() == [0, 0, 1, 127, 254, 255]
    import torch  # the form predict runs: the same bytes from a tensor

    assert T.quantize(torch.from_numpy(p)).tolist() == [0, 0, 1, 127, 254, 255]
    np.testing.assert_array_equal(T.binarize(p, 0.5), [0, 0, 0, 255, 255, 255])


@pytest.mark.parametrize("threshold", [0.5, 0.3, 1e-3, 0.999])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_binarize_gives_255_from_the_threshold_itself(threshold: float, kind: str) -> None:
    """``--threshold T``: 255 where p >= T, so p == T is foreground and the float32 just below is
    not (T compared as a float32, as the maps are)."""
    import torch

    t = np.float32(threshold)
    p = np.array([np.nextafter(t, np.float32(0)), t, np.nextafter(t, np.float32(1))], np.float32)
    if kind == "numpy":
        got = T.binarize(p, threshold)
        assert got.dtype == np.uint8
    else:
        out = T.binarize(torch.from_numpy(p), threshold)
        assert out.dtype == torch.uint8
        got = out.numpy()
    assert got.tolist() == [0, 255, 255]


def test_parse_color() -> None:
    assert parse_color("white") == (255, 255, 255)
    assert parse_color("#0F0") == (0, 255, 0)
    assert parse_color("#102030") == (16, 32, 48)
    assert parse_color("1,2,3") == (1, 2, 3)
    with pytest.raises(ValueError, match="not a colour"):
        parse_color("bluish")
    with pytest.raises(ValueError, match=r"each of r,g,b is 0\.\.255"):  # not only "not a colour"
        parse_color("300,0,0")


def test_composite_and_cutout_keep_sample_type() -> None:
    pixels = np.full((2, 3, 3), 65535, np.uint16)
    m = np.array([[0, 255, 128]] * 2, np.uint8)
    rgba = T.cutout(pixels, m)
    assert rgba.dtype == np.uint16 and rgba[0, 1, 3] == 65535 and rgba[0, 2, 3] == 128 * 257
    comp = T.composite(pixels, m, (0, 0, 0))
    assert comp.dtype == np.uint16 and comp[0, 0, 0] == 0 and comp[0, 1, 0] == 65535


# -------------------------------------------------------------------------------- atomic writing


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.tif"
    target.write_bytes(b"old")
    real = tifffile.imwrite

    def half_then_ctrl_c(path: Path, data: np.ndarray, **kw: object) -> None:
        real(path, data, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        imio.write_tiff(target, _rgb16())
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]


def test_write_tiff_16bit_rgba_roundtrip(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb16(), _rgb16()[..., :1]], 2)
    imio.write_tiff(tmp_path / "o.tif", rgba)
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.shape == (H, W, 4) and page.extrasamples
        np.testing.assert_array_equal(page.asarray(), rgba)


def test_encode_png_rgb_order(tmp_path: Path) -> None:
    rgb = _rgb8()
    imio.write_png(tmp_path / "o.png", rgb)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "o.png"))[..., ::-1], rgb)


def test_lzw_tiff_read_without_imagecodecs(tmp_path: Path) -> None:
    rgb = _rgb8()
    path = tmp_path / "lzw.tif"
    assert cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_TIFF_COMPRESSION, 5])  # 5 = LZW
    np.testing.assert_array_equal(imio.read_image(path).pixels, rgb)


def test_giant_headers_are_refused_before_decoding(tmp_path: Path) -> None:
    """A small file that claims 33792x33792 is one line, not gigabytes of allocation."""
    import resource
    import struct
    import subprocess
    import zlib

    import tifffile

    from pdseg_cli.data.header import image_size

    # a sparse TIFF (header and tags only on disk) and a PNG whose IHDR claims the same size
    tifffile.imwrite(tmp_path / "big.tif", shape=(33792, 33792, 3), dtype="uint8")
    ihdr = struct.pack(">IIBBBBB", 33792, 33792, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    (tmp_path / "huge.png").write_bytes(png + b"\x00" * 64)
    assert image_size(tmp_path / "big.tif") == image_size(tmp_path / "huge.png") == (33792, 33792)
    out = subprocess.run(
        [sys.executable, "-m", "pdseg_cli", "predict", str(tmp_path / "big.tif"), str(tmp_path / "huge.png"),
         "-o", str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    text = " ".join(out.stderr.split())
    assert text.count("over the limit") == 2 and "--max-pixels" in text and "Traceback" not in text
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit < 1 << 30  # under 1 GiB


def test_opencv_assertions_become_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    dump = (
        "OpenCV(4.14.0) /io/opencv/modules/imgcodecs/src/loadsave.cpp:77: error: (-215:Assertion failed) "
        "pixels <= CV_IO_MAX_IMAGE_PIXELS in function 'validateInputImageSize'\n"
    )

    def refuse(*args: object) -> None:
        raise cv2.error(dump)

    monkeypatch.setattr(imio.cv2, "imdecode", refuse)
    with pytest.raises(InputError) as info:
        imio.read_image(path)
    assert info.value.message == f"{path}: cannot decode (OpenCV: pixels <= CV_IO_MAX_IMAGE_PIXELS)"


def test_max_pixels_message_counts_pixels(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((30, 45, 3), np.uint8))
    with pytest.raises(InputError) as err:
        imio.read_image(tmp_path / "a.png", max_pixels=1000)
    want = f"{tmp_path / 'a.png'}: 45x30 is 1,350 pixels, over the limit of 1,000; not decoded"
    assert want in str(err.value)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG of its signature and IHDR chunk only (valid CRC): it claims ``width`` x ``height``
    (8-bit RGB) in 33 bytes."""
    import struct
    import zlib

    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )
    return path


class _PastTheSizeCheck(Exception):
    """Raised where read_image goes on to decode: the header's size was let through."""


@pytest.mark.parametrize(
    ("width", "height", "refused"),
    [(8192, 8192, False), (16384, 8192, False), (16385, 8192, True), (11586, 11586, True)],
    ids=["8192x8192", "2^27-exactly", "one-column-over", "square-just-over"],
)
def test_the_default_max_pixels_is_2_to_the_27_from_the_header_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int, height: int, refused: bool
) -> None:
    """README and --help: "default 2^27: 8192x8192 passes". The check runs on the header, before
    decoding, so a header-only file tells which side of the limit a size falls on."""
    import inspect

    from pdseg_cli import config
    from pdseg_cli.commands.predict import predict

    assert config.DEFAULT_MAX_PIXELS == 1 << 27 == 134_217_728
    assert inspect.signature(predict).parameters["max_pixels"].default == 1 << 27  # --max-pixels

    def decode(*args: object) -> None:
        raise _PastTheSizeCheck

    monkeypatch.setattr(imio, "header_extras", decode)
    path = _png_header_only(tmp_path / "claims.png", width, height)
    if refused:
        with pytest.raises(
            InputError, match=rf"{width}x{height} is {width * height:,} pixels, over the limit of 134,217,728"
        ):
            imio.read_image(path)
    else:
        with pytest.raises(_PastTheSizeCheck):
            imio.read_image(path)


def test_an_int32_tiff_holding_8bit_values_reads_as_8bit(tmp_path: Path) -> None:
    eight = _rgb8()
    tifffile.imwrite(tmp_path / "i.tif", eight.astype(np.int32), photometric="rgb")
    got = imio.read_image(tmp_path / "i.tif").pixels
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, eight)


def test_an_8bit_palette_tiff_reads_as_8bit_rgb(tmp_path: Path) -> None:
    index = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    colours = np.zeros((3, 256), dtype=np.uint16)
    colours[:, 1] = [255 * 257, 0, 128 * 257]  # the spec's 16-bit colours: red-violet
    colours[:, 2] = [0, 65535, 0]
    tifffile.imwrite(tmp_path / "pal.tif", index, photometric="palette", colormap=colours)
    pixels = imio.read_image(tmp_path / "pal.tif").pixels
    assert pixels.dtype == np.uint8  # so --save alpha writes an 8-bit PNG, as for other 8-bit inputs
    assert pixels[0, 1].tolist() == [255, 0, 128] and pixels[1, 0].tolist() == [0, 255, 0]
    assert pixels[0, 0].tolist() == [0, 0, 0]


def test_tiff_orientation_tag_is_applied_as_opencv_applies_exif(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.tif"
        tifffile.imwrite(path, rgb, photometric="rgb", extratags=[(274, 3, 1, orientation, True)])
        opencv = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        np.testing.assert_array_equal(imio.read_image(path).pixels, opencv, err_msg=str(orientation))


def test_an_unassociated_alpha_tiff_read_by_libtiff_keeps_its_colours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a compression tifffile cannot decode without imagecodecs (e.g. LZW) falls back on OpenCV's
    # libtiff, whose RGBA reader multiplies the colours of unassociated-alpha images by alpha
    rgba = np.zeros((6, 4, 4), np.uint8)
    rgba[..., :3] = (50, 100, 200)
    rgba[:2, :, 3], rgba[2:4, :, 3] = 255, 128  # the last two rows fully transparent
    path = tmp_path / "cut.tif"
    tifffile.imwrite(
        path, rgba, photometric="rgb", extrasamples=["unassalpha"], extratags=[(274, 3, 1, 6, True)]
    )

    def no_codec(*args: object, **kwargs: object) -> None:
        raise ImportError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codec)
    loaded = imio.read_image(path)
    assert loaded.pixels.shape == (4, 6, 3)  # orientation 6 applied
    kept = loaded.pixels[:, 2:].reshape(-1, 3).astype(int)  # the rows of alpha 255 and 128
    assert np.abs(kept - [50, 100, 200]).max() <= 1  # 8-bit premultiplying rounds: one level back
    assert (
        loaded.pixels[:, :2].max() == 0 and "8 fully transparent pixels read as black" in loaded.warnings[0]
    )
    deep = rgba.astype(np.uint16) * 257  # 16-bit: libtiff reads it as stored; only alpha is dropped
    tifffile.imwrite(tmp_path / "deep.tif", deep, photometric="rgb", extrasamples=["unassalpha"])
    got = imio.read_image(tmp_path / "deep.tif").pixels
    assert got.dtype == np.uint16 and got.shape == deep[..., :3].shape
    np.testing.assert_array_equal(got, deep[..., :3])


def test_pnm_files_from_scanners_are_read(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "scan.ppm"), rgb[..., ::-1])
    gray16 = rgb[..., 0].astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "scan16.pgm"), gray16)
    assert imio.is_image_file(tmp_path / "scan.PPM")
    np.testing.assert_array_equal(imio.read_image(tmp_path / "scan.ppm").pixels, rgb)
    sixteen = imio.read_image(tmp_path / "scan16.pgm").pixels
    assert sixteen.dtype == np.uint16 and np.array_equal(sixteen[..., 1], gray16)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (b"P2\n3 1\n255\n0 128 255", [[0, 128, 255]]),  # the last sample with no whitespace after it
        (b"P2\n3 1\n255\n0 128 255\n", [[0, 128, 255]]),
        (b"P3\n1 1\n255\n10 20 30", [[[10, 20, 30]]]),
        (b"P1\n3 1\n0 1 0", [[255, 0, 255]]),  # PBM: 1 is black
    ],
)
def test_plain_pnm_files_are_read_to_their_last_sample(tmp_path: Path, text: bytes, want: list) -> None:
    """A plain PGM whose last sample ends the file was refused as corrupt; PIL and Netpbm read it."""
    path = tmp_path / "plain.pnm"
    path.write_bytes(text)
    loaded = imio.read_image(path)
    pixels = loaded.pixels
    # said where OpenCV needed the whitespace (a file cut short would read so too); its P1 reader
    # reads bits one digit at a time and never did
    assert bool(loaded.warnings) == (not text.endswith(b"\n") and not text.startswith(b"P1"))
    expected = np.array(want, dtype=np.uint8)
    if expected.ndim == 2:
        expected = np.repeat(expected[..., None], 3, axis=2)
    np.testing.assert_array_equal(pixels, expected)


def test_twelve_bit_data_in_a_sixteen_bit_file_is_warned_of(tmp_path: Path) -> None:
    # a scanner's 0..4095 in a 16-bit file reads nearly black, and the model finds nothing in it
    twelve = (np.arange(60 * 40 * 3, dtype=np.uint16).reshape(60, 40, 3) % 4081).astype(np.uint16)
    tifffile.imwrite(tmp_path / "scan.tif", twelve, photometric="rgb")
    loaded = imio.read_image(tmp_path / "scan.tif")
    assert np.array_equal(loaded.pixels, twelve)  # read as stored
    assert [w for w in loaded.warnings if "samples stop at 4080 of 65535 (12-bit data" in w]
    cv2.imwrite(str(tmp_path / "full.png"), twelve * 16)  # the same scan on the full 16-bit scale
    assert imio.read_image(tmp_path / "full.png").warnings == []


@pytest.mark.parametrize(
    ("dtype", "top", "said"),
    [
        (
            np.uint32,
            4000,
            "a 32-bit image whose samples stop at 4000 of 4294967295 (12-bit data in a 32-bit file",
        ),
        (
            np.int16,
            4000,  # 12-bit camera data: was not warned of, judged by its doubled values
            "a signed 16-bit image whose samples stop at 4000 of 32767 (12-bit data in a signed 16-bit "
            "file?): read at twice its values",
        ),
    ],
)
def test_few_bits_in_a_wider_file_name_the_files_own_type(
    tmp_path: Path, dtype: type, top: int, said: str
) -> None:
    # the warning named a 16-bit file and the value read, where the file is 32-bit or signed
    scan = (np.arange(40 * 40 * 3).reshape(40, 40, 3) % (top + 1)).astype(dtype)
    tifffile.imwrite(tmp_path / "scan.tif", scan, photometric="rgb")
    warnings = imio.read_image(tmp_path / "scan.tif").warnings
    assert [w for w in warnings if said in w], warnings


def test_a_tiff_without_image_data_is_refused_and_one_missing_strips_is_warned_of(tmp_path: Path) -> None:
    # a write that stopped after the header: strip offsets and byte counts all 0, read as black and
    # reported done with an empty mask
    tifffile.imwrite(tmp_path / "whole.tif", np.full((64, 48, 3), 200, np.uint8), rowsperstrip=16)
    data = bytearray((tmp_path / "whole.tif").read_bytes())
    entries = []  # (where the tag's values are, bytes per value)
    with tifffile.TiffFile(tmp_path / "whole.tif") as tif:
        page = tif.pages[0]
        assert len(page.dataoffsets) == 4
        for name in ("StripOffsets", "StripByteCounts"):
            tag = page.tags[name]
            entries.append((tag.valueoffset, {"SHORT": 2, "LONG": 4}[tag.dtype.name]))

    def emptied(strips: range) -> bytes:
        out = bytearray(data)
        for at, width in entries:
            for strip in strips:
                out[at + strip * width : at + (strip + 1) * width] = bytes(width)
        return bytes(out)

    (tmp_path / "part.tif").write_bytes(emptied(range(3, 4)))
    loaded = imio.read_image(tmp_path / "part.tif")
    assert [w for w in loaded.warnings if "1 of its 4 strips holds no data" in w]
    (tmp_path / "none.tif").write_bytes(emptied(range(4)))
    with pytest.raises(InputError, match="a TIFF with no image data"):
        imio.read_image(tmp_path / "none.tif")


def test_a_tiff_cut_short_is_said_so_not_in_tifffile_words(tmp_path: Path) -> None:
    # "not a valid TIFF (corrupted tile @ (0, 0, 256, 768, 0) cannot be reshaped from ...)"
    pixels = np.arange(128 * 128 * 3, dtype=np.uint8).reshape(128, 128, 3)
    tifffile.imwrite(tmp_path / "whole.tif", pixels, tile=(32, 32), photometric="rgb")
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    cut_short = "a TIFF cut short: .* tiles? lies? past the end of the file"
    with pytest.raises(InputError, match=cut_short) as info:
        imio.read_image(tmp_path / "cut.tif")
    assert "check that the file is complete" in str(info.value)
