"""Cut-outs keep the input's colour profile and its own alpha (`pdseg predict --save alpha,composite`).

The ICC profile (JPEG APP2, PNG iCCP, WebP ICCP, TIFF tag 34675) goes into the alpha and composite
files, never into the mask; the input's alpha is multiplied into the cut-out's. Tiny images made
here, pdseg-tiny on the CPU.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from helpers import EXAMPLE_IMAGES, png_chunks, run_cli

from pdseg_cli.data import header, icc
from pdseg_cli.data import images as imio
from pdseg_cli.data import transforms as T

WHITE = (255, 255, 255)
BG = (10, 200, 30)  # --bg for the composites: not a colour the test images hold


def _profile(tag: bytes = b"pdseg test", size: int = 600) -> bytes:
    """A made-up RGB ICC profile: a valid header (size, ``acsp``, RGB data space), no tags (so
    libpng has nothing to warn of), then ``tag`` and random bytes (that compress no better than a
    real profile's)."""
    head = bytearray(132)  # the header, then a tag count of 0
    head[0:4] = struct.pack(">I", size)
    head[12:16] = b"mntr"
    head[16:20] = b"RGB "
    head[20:24] = b"XYZ "
    head[36:40] = b"acsp"
    head[68:80] = bytes.fromhex("0000f6d6000100000000d32d")  # the D50 illuminant libpng checks for
    body = tag + np.random.default_rng(size).integers(0, 256, size - 132 - len(tag), dtype=np.uint8).tobytes()
    return bytes(head) + body


def _image(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] //= 3  # some structure
    return img


def _png_profile(path: Path) -> bytes | None:
    """The profile in a PNG's iCCP chunk, parsed here independently of pdseg (it must come before
    IDAT; pdseg's outputs have their mark, a tEXt chunk, between IHDR and it)."""
    chunks = png_chunks(path.read_bytes())
    names = [name for name, _ in chunks]
    found = [i for i, name in enumerate(names) if name == b"iCCP"]
    if not found:
        return None
    assert len(found) == 1 and 0 < found[0] < names.index(b"IDAT"), "one iCCP, after IHDR, before IDAT"
    data = chunks[found[0]][1]
    name_end = data.index(b"\x00")
    assert 1 <= name_end <= 79 and data[name_end + 1] == 0  # a name, NUL, compression method 0
    return zlib.decompress(data[name_end + 2 :])


def _jpeg_with_app2(rgb: np.ndarray, segments: list[bytes]) -> bytes:
    """A JPEG of ``rgb`` with these APP2 segment bodies inserted after SOI."""
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    jpeg = buf.tobytes()
    app2 = b"".join(b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body for body in segments)
    return jpeg[:2] + app2 + jpeg[2:]


def _icc_segments(profile: bytes, parts: int) -> list[bytes]:
    step = -(-len(profile) // parts)
    pieces = [profile[k * step : (k + 1) * step] for k in range(parts)]
    return [b"ICC_PROFILE\x00" + bytes([k + 1, parts]) + piece for k, piece in enumerate(pieces)]


def _png_chunk(name: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + name + data + struct.pack(">I", zlib.crc32(name + data))


def _insert_after_ihdr(png: bytes, *chunks: bytes) -> bytes:
    return png[:33] + b"".join(chunks) + png[33:]


def _predict(ckpt: Path, image: Path, out: Path, *extra: str) -> None:
    result = run_cli(
        "predict", image, "--out", out, "-w", ckpt, "--device", "cpu", "--size", "64",
        "--save", "mask,alpha,composite", "--bg", "#0ac81e", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def _read_png(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array.ndim == 3:
        array = array[..., [2, 1, 0, 3]] if array.shape[2] == 4 else array[..., ::-1]
    return array


def _old_composite(pixels: np.ndarray, byte_map: np.ndarray, background: tuple[int, ...]) -> np.ndarray:
    """The composite formula before input alpha was kept (8-bit): rgb * a + bg * (1 - a), a = map / 255."""
    a = byte_map[..., None].astype(np.float32) / np.float32(255.0)
    bg = np.asarray(background, dtype=np.float32)
    blend = pixels.astype(np.float32) * a + bg * (np.float32(1.0) - a)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ colour profile


def test_jpeg_profile_in_two_app2_segments_goes_into_the_cutouts_not_the_mask(
    tmp_path: Path, spread_tiny_ckpt: Path
) -> None:
    profile = _profile(size=1000)
    path = tmp_path / "p.jpg"
    # the second part first: parts are joined by their sequence number, not their order in the file
    path.write_bytes(_jpeg_with_app2(_image(), _icc_segments(profile, 2)[::-1]))
    assert imio.read_image(path).icc_profile == profile
    out = tmp_path / "out"
    _predict(spread_tiny_ckpt, path, out)
    assert _png_profile(out / "p_alpha.png") == profile
    assert _png_profile(out / "p_composite.png") == profile
    assert _png_profile(out / "p.png") is None  # the mask is data, not colours
    # the profile changes no pixel: the cut-out is the image under the mask
    rgba, mask = _read_png(out / "p_alpha.png"), _read_png(out / "p.png")
    np.testing.assert_array_equal(rgba[..., 3], mask)


def test_png_iccp_input_goes_into_the_png_cutouts(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    profile = _profile(b"png profile", size=777)
    png = imio.encode_png(_image(seed=1))
    iccp = _png_chunk(b"iCCP", b"Display P3\x00\x00" + zlib.compress(profile))
    path = tmp_path / "q.png"
    path.write_bytes(_insert_after_ihdr(png, iccp))
    out = tmp_path / "out"
    _predict(spread_tiny_ckpt, path, out)
    assert _png_profile(out / "q_alpha.png") == profile
    assert _png_profile(out / "q_composite.png") == profile
    assert _png_profile(out / "q.png") is None


def test_16_bit_tiff_profile_goes_into_the_tiff_cutouts(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    profile = _profile(b"adobe rgb scan", size=560)
    rgb16 = _image(seed=2).astype(np.uint16) * 257
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, rgb16, photometric="rgb", extratags=[(34675, 7, len(profile), profile, True)])
    out = tmp_path / "out"
    _predict(spread_tiny_ckpt, path, out)
    for name in ("s_alpha.tif", "s_composite.tif"):
        with tifffile.TiffFile(out / name) as tif:
            tag = tif.pages[0].tags.get(34675)
            assert tag is not None and bytes(tag.value) == profile, name
    assert _png_profile(out / "s.png") is None  # the mask of a 16-bit input is still an 8-bit PNG


def test_webp_iccp_chunk_is_read() -> None:
    profile = _profile(b"webp", size=300)
    ok, buf = cv2.imencode(".webp", _image()[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok
    plain = buf.tobytes()
    assert plain[12:16] == b"VP8L"  # lossless, simple format: add VP8X (ICC flag) and ICCP before it
    vp8x = (
        b"VP8X"
        + struct.pack("<I", 10)
        + bytes([0x20, 0, 0, 0])
        + (31).to_bytes(3, "little")
        + (23).to_bytes(3, "little")
    )
    iccp = b"ICCP" + struct.pack("<I", len(profile)) + profile
    body = b"WEBP" + vp8x + iccp + plain[12:]
    data = b"RIFF" + struct.pack("<I", len(body)) + body
    extras = header.header_extras(Path("unused.webp"), data)
    assert extras.icc_profile == profile and not extras.has_alpha


@pytest.mark.parametrize(
    "damage",
    ["one part of two", "part numbers repeat", "count differs", "truncated profile", "not acsp", "gray"],
)
def test_damaged_or_unusable_jpeg_profile_is_no_profile_and_no_error(
    tmp_path: Path, spread_tiny_ckpt: Path, damage: str
) -> None:
    profile = _profile(size=900)
    segments = _icc_segments(profile, 2)
    if damage == "one part of two":
        segments = segments[:1]
    elif damage == "part numbers repeat":
        segments = [segments[0], segments[0]]
    elif damage == "count differs":
        segments[1] = segments[1][:12] + bytes([2, 3]) + segments[1][14:]
    elif damage == "truncated profile":  # the header says 900 bytes, 899 are there
        segments[1] = segments[1][:-1]
    elif damage == "not acsp":
        segments[0] = segments[0].replace(b"acsp", b"xxxx")
    else:  # a whole gray profile does not describe the RGB pdseg makes of a gray file
        segments[0] = segments[0].replace(b"RGB ", b"GRAY")
    path = tmp_path / "d.jpg"
    path.write_bytes(_jpeg_with_app2(_image(), segments))
    loaded = imio.read_image(path)
    assert loaded.icc_profile is None and loaded.warnings == []
    out = tmp_path / "out"
    _predict(spread_tiny_ckpt, path, out)
    assert _png_profile(out / "d_alpha.png") is None
    assert _png_profile(out / "d_composite.png") is None


@pytest.mark.parametrize("damage", ["crc", "zlib", "method"])
def test_damaged_png_iccp_is_no_profile(tmp_path: Path, damage: str) -> None:
    data = b"icc\x00\x00" + zlib.compress(_profile())
    if damage == "zlib":
        data = data[:-8]  # the stream cut short
    elif damage == "method":
        data = b"icc\x00\x01" + data[5:]
    chunk = _png_chunk(b"iCCP", data)
    if damage == "crc":
        chunk = chunk[:-1] + bytes([chunk[-1] ^ 1])
    path = tmp_path / "d.png"
    path.write_bytes(_insert_after_ihdr(imio.encode_png(_image()), chunk))
    assert imio.read_image(path).icc_profile is None


def test_png_written_with_a_profile_decodes_to_the_same_pixels() -> None:
    rgba = np.dstack([_image(), np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)])
    profile = _profile(size=5000)
    png = imio.encode_png(rgba, icc_profile=profile)
    assert png == imio.png_with_icc_profile(imio.encode_png(rgba), profile)
    np.testing.assert_array_equal(
        cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED),
        cv2.imdecode(np.frombuffer(imio.encode_png(rgba), np.uint8), cv2.IMREAD_UNCHANGED),
    )
    assert [name for name, _ in png_chunks(png)][:2] == [b"IHDR", b"iCCP"]
    # a tiny regular profile would compress to a chunk libpng drops as "too short" (under 92 bytes)
    tiny = _profile(b"", size=132)
    chunk = png_chunks(imio.encode_png(rgba, icc_profile=tiny))[1]
    assert chunk[0] == b"iCCP" and len(chunk[1]) >= 92 and zlib.decompress(chunk[1][5:]) == tiny


# ------------------------------------------------------------------------------ input alpha


def test_transparent_input_pixels_stay_transparent(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    h, w = 24, 32
    rgb = _image(h, w, seed=3)
    alpha = np.full((h, w), 255, np.uint8)
    alpha[:, : w // 2] = 0
    path = tmp_path / "t.png"
    imio.write_png(path, np.dstack([rgb, alpha]))
    loaded = imio.read_image(path)
    np.testing.assert_array_equal(loaded.pixels, rgb)  # segmented on its RGB, as before
    np.testing.assert_array_equal(loaded.alpha, alpha)
    out = tmp_path / "out"
    _predict(spread_tiny_ckpt, path, out)
    mask = _read_png(out / "t.png")
    assert mask[:, : w // 2].max() > 0  # the model's map, untouched by the input's alpha
    rgba = _read_png(out / "t_alpha.png")
    np.testing.assert_array_equal(rgba[:, : w // 2, 3], 0)
    np.testing.assert_array_equal(rgba[:, w // 2 :, 3], mask[:, w // 2 :])
    comp = _read_png(out / "t_composite.png")
    np.testing.assert_array_equal(comp[:, : w // 2], np.broadcast_to(np.uint8(BG), (h, w // 2, 3)))


def test_fractional_input_alpha_is_multiplied_exactly_8_and_16_bit() -> None:
    byte_map = np.array([[0, 255, 255, 128, 200, 1]], np.uint8)
    a8 = np.array([[255, 0, 255, 128, 100, 255]], np.uint8)
    pixels8 = np.full((1, 6, 3), 90, np.uint8)
    # floor(map * a / 255): 0, 0, 255, floor(16384 / 255) = 64, floor(20000 / 255) = 78, 1
    np.testing.assert_array_equal(T.cutout(pixels8, byte_map, a8)[..., 3], [[0, 0, 255, 64, 78, 1]])
    a16 = a8.astype(np.uint16) * 257 + np.array([[0, 0, 0, 7, 9, 0]], np.uint16)
    pixels16 = pixels8.astype(np.uint16) * 257
    expected16 = (byte_map.astype(np.uint64) * 257 * a16) // 65535
    # e.g. 128 * 257 * 32903 // 65535 = 16516, 200 * 257 * 25709 // 65535 = 20163
    assert expected16.tolist() == [[0, 0, 65535, 16516, 20163, 257]]
    np.testing.assert_array_equal(T.cutout(pixels16, byte_map, a16)[..., 3], expected16)
    # the composite blends with that same alpha: 90 a + 10 (1 - a) on the red channel
    comp = T.composite(pixels8, byte_map, (10, 10, 10), a8)
    a = np.array([0, 0, 255, 64, 78, 1]) / 255
    np.testing.assert_array_equal(comp[0, :, 0], np.rint(90 * a + 10 * (1 - a)).astype(np.uint8))


def test_16_bit_rgba_png_alpha_follows_the_outputs_depth(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    h, w = 20, 28
    rgb = _image(h, w, seed=4).astype(np.uint16) * 257
    alpha = np.tile(np.linspace(0, 65535, w).astype(np.uint16), (h, 1))
    path = tmp_path / "u.png"
    imio.write_png(path, np.dstack([rgb, alpha]))
    out = tmp_path / "out"
    _predict(spread_tiny_ckpt, path, out)
    mask = _read_png(out / "u.png")
    with tifffile.TiffFile(out / "u_alpha.tif") as tif:
        rgba = tif.pages[0].asarray()
    assert rgba.dtype == np.uint16
    expected = (mask.astype(np.uint64) * 257 * alpha) // 65535
    np.testing.assert_array_equal(rgba[..., 3], expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_alpha_is_oriented_with_the_colours(tmp_path: Path, orientation: int) -> None:
    h, w = 5, 7
    rgb = _image(h, w, seed=5)
    alpha = (np.arange(h * w).reshape(h, w) * 7).astype(np.uint8)
    exif = b"MM\x00*\x00\x00\x00\x08\x00\x01" + struct.pack(">HHIH2x", 274, 3, 1, orientation) + b"\x00" * 4
    png = imio.encode_png(np.dstack([rgb, alpha]))
    path = tmp_path / "o.png"
    path.write_bytes(_insert_after_ihdr(png, _png_chunk(b"eXIf", exif)))
    loaded = imio.read_image(path)
    # the colours as OpenCV orients them when it drops alpha (as pdseg read them before)...
    opencv = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)[..., ::-1]
    np.testing.assert_array_equal(loaded.pixels, opencv)
    # ...and the alpha turned the same way, pixel for pixel
    expected = imio.orient(np.dstack([rgb, alpha]), orientation)
    np.testing.assert_array_equal(loaded.pixels, expected[..., :3])
    np.testing.assert_array_equal(loaded.alpha, expected[..., 3])


def test_gray_alpha_palette_and_tiff_alpha_are_kept(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(6)
    la = rng.integers(0, 256, (6, 9, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    loaded = imio.read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(loaded.pixels, np.repeat(la[..., :1], 3, axis=2))
    np.testing.assert_array_equal(loaded.alpha, la[..., 1])

    index = rng.integers(0, 3, (6, 9), dtype=np.uint8)
    palette = Image.fromarray(index, "P")
    palette.putpalette([200, 0, 0, 0, 200, 0, 0, 0, 200])
    palette.save(tmp_path / "p.png", transparency=bytes([0, 128, 255]))
    np.testing.assert_array_equal(imio.read_image(tmp_path / "p.png").alpha, np.array([0, 128, 255])[index])
    palette.save(tmp_path / "opaque.png")
    assert imio.read_image(tmp_path / "opaque.png").alpha is None

    rgba16 = rng.integers(0, 65536, (6, 9, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", rgba16, photometric="rgb", extrasamples=["unassalpha"])
    loaded = imio.read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(loaded.pixels, rgba16[..., :3])
    np.testing.assert_array_equal(loaded.alpha, rgba16[..., 3])


def test_opaque_alpha_keeps_no_alpha_and_float_alpha_is_kept(tmp_path: Path) -> None:
    rgba = np.dstack([_image(), np.full((24, 32), 255, np.uint8)])
    imio.write_png(tmp_path / "o.png", rgba)
    assert imio.read_image(tmp_path / "o.png").alpha is None
    rgbaf = np.random.default_rng(7).random((6, 9, 4)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", rgbaf, photometric="rgb", extrasamples=["unassalpha"])
    # a float file's alpha was dropped in silence (its cut-outs were opaque where it was not)
    np.testing.assert_allclose(imio.read_image(tmp_path / "f.tif").alpha, rgbaf[..., 3])


def test_rgb_input_outputs_are_as_before(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    rgb = _image(seed=8)
    path = tmp_path / "r.png"
    imio.write_png(path, rgb)
    loaded = imio.read_image(path)
    assert loaded.alpha is None and loaded.icc_profile is None
    out = tmp_path / "out"
    _predict(spread_tiny_ckpt, path, out, "--no-refine-foreground")
    mask = _read_png(out / "r.png")
    rgba = _read_png(out / "r_alpha.png")
    np.testing.assert_array_equal(rgba, np.dstack([rgb, mask]))
    np.testing.assert_array_equal(_read_png(out / "r_composite.png"), _old_composite(rgb, mask, BG))
    for name in ("r.png", "r_alpha.png", "r_composite.png"):
        # only pdseg's mark added (a tEXt chunk): OpenCV's own PNG otherwise
        chunks = png_chunks((out / name).read_bytes())
        assert [c for c, _ in chunks] == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
        made = header.marked_source(out / name)  # the input's ids, and the model and settings'
        assert made is not None and made.made is not None
        assert chunks[1][1] == b"Software\x00" + header.mark_of(header.input_ids(path), made.made).encode()


# ----------------------------------------------------------------------------------------------
# --bg in the image's own ICC profile

ADOBE_RGB = imio.read_image(EXAMPLE_IMAGES / "rocket.jpg").icc_profile  # the bundled photo's


def _lcms_into(profile: bytes, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """LittleCMS's relative colorimetric sRGB -> ``profile`` of ``colours`` (Pillow's ImageCms)."""
    image_cms = pytest.importorskip("PIL.ImageCms")
    from PIL import Image

    transform = image_cms.buildTransform(
        image_cms.createProfile("sRGB"),
        image_cms.ImageCmsProfile(io.BytesIO(profile)),
        "RGB",
        "RGB",
        renderingIntent=image_cms.Intent.RELATIVE_COLORIMETRIC,
    )
    row = Image.fromarray(np.array([colours], dtype=np.uint8))
    return np.asarray(image_cms.applyTransform(row, transform))[0].astype(float)


def test_srgb_colours_go_into_a_matrix_profile_as_littlecms_puts_them() -> None:
    assert ADOBE_RGB is not None and b"Adobe RGB (1998)" in ADOBE_RGB
    rng = np.random.default_rng(0)
    colours = [WHITE, (0, 0, 0), (0, 255, 0), (255, 0, 0), (51, 102, 204)]
    colours += [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(200)]  # type: ignore[misc]
    ours = np.array([icc.srgb_into_profile(c, ADOBE_RGB) for c in colours])
    lcms = _lcms_into(ADOBE_RGB, colours)  # rounded to bytes
    assert np.abs(ours - lcms).max() <= 0.6
    assert tuple(np.rint(ours[2])) == (144, 255, 60)  # sRGB's green is less saturated in Adobe RGB
    assert tuple(np.rint(ours[0])) == WHITE and tuple(ours[1]) == (0, 0, 0)
    # LittleCMS's own sRGB profile (parametric tone curves): sRGB into sRGB changes nothing
    image_cms = pytest.importorskip("PIL.ImageCms")
    srgb = image_cms.ImageCmsProfile(image_cms.createProfile("sRGB")).tobytes()
    same = np.array([icc.srgb_into_profile(c, srgb) for c in colours])
    assert np.abs(same - np.array(colours)).max() <= 0.5


def test_colours_are_kept_as_given_without_a_profile_pdseg_reads() -> None:
    assert icc.srgb_into_profile((0, 255, 0), None) == (0.0, 255.0, 0.0)
    for profile in (_profile(), b"", b"\0" * 300, ADOBE_RGB[:200]):  # no tags, nothing, cut short
        assert icc.read_matrix_shaper(profile) is None
        assert icc.srgb_into_profile((1, 2, 3), profile) == (1.0, 2.0, 3.0)
    gray = bytearray(ADOBE_RGB)
    gray[16:20] = b"GRAY"  # a gray or CMYK profile has no RGB primaries
    assert icc.read_matrix_shaper(bytes(gray)) is None


def test_the_composite_paints_bg_in_the_images_profile(tmp_path: Path) -> None:
    # '#00ff00' stored as (0, 255, 0) in an Adobe RGB composite shows as a green no sRGB screen has
    out = tmp_path / "out"
    result = run_cli(
        "predict", EXAMPLE_IMAGES / "rocket.jpg", "-o", out, "-s", "mask,composite", "--threshold", "0.5",
        "--bg", "#00ff00", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mask = cv2.imread(str(out / "rocket.png"), cv2.IMREAD_UNCHANGED)
    painted = cv2.imread(str(out / "rocket_composite.png"))[..., ::-1][mask == 0]
    assert len(painted) > 1000
    assert {tuple(p) for p in painted} == {(144, 255, 60)}
    assert imio.read_image(out / "rocket_composite.png").icc_profile == ADOBE_RGB


def _with_curves(profile: bytes, curve: bytes) -> bytes:
    """``profile`` with its three tone curves replaced by ``curve`` (a whole ``curv``/``para`` tag)."""
    (count,) = struct.unpack_from(">I", profile, 128)
    tags = []
    for i in range(count):
        sig, offset, size = struct.unpack_from(">4sII", profile, 132 + 12 * i)
        tags.append((sig, curve if sig in (b"rTRC", b"gTRC", b"bTRC") else profile[offset : offset + size]))
    table, body, at = b"", b"", 132 + 12 * len(tags)
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += struct.pack(">4sII", sig, at + len(body), len(data))
        body += data
    head = bytearray(profile[:128])
    head[0:4] = struct.pack(">I", at + len(body))
    head[84:100] = bytes(16)  # the profile ID (an MD5 of the original) no longer holds
    return bytes(head) + struct.pack(">I", len(tags)) + table + body


def _s15(*values: float) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


@pytest.mark.parametrize(
    "curve",
    [
        b"curv" + bytes(4) + struct.pack(">I", 0),  # identity
        b"curv" + bytes(4) + struct.pack(">IH", 1, round(1.8 * 256)),  # a gamma (ProPhoto's)
        b"curv" + bytes(4) + struct.pack(">I", 5) + struct.pack(">5H", 0, 3000, 12000, 35000, 65535),
        b"para" + bytes(4) + struct.pack(">H", 0) + bytes(2) + _s15(2.2),
        b"para" + bytes(4) + struct.pack(">H", 1) + bytes(2) + _s15(2.4, 1.1, -0.05),
        b"para" + bytes(4) + struct.pack(">H", 2) + bytes(2) + _s15(2.4, 0.95, 0.05, 0.01),
        b"para"
        + bytes(4)
        + struct.pack(">H", 3)
        + bytes(2)
        + _s15(2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045),
        b"para"
        + bytes(4)
        + struct.pack(">H", 4)
        + bytes(2)
        + _s15(2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045, 0.004, 0.004),  # sRGB lifted by an offset
    ],
    ids=["identity", "gamma", "table", "para0", "para1", "para2", "para3", "para4"],
)
def test_every_kind_of_tone_curve_goes_as_littlecms_reads_it(curve: bytes) -> None:
    profile = _with_curves(ADOBE_RGB, curve)
    assert icc.read_matrix_shaper(profile) is not None
    colours = [WHITE, (0, 0, 0), (0, 255, 0), (40, 30, 20), (200, 120, 60), (128, 128, 128)]
    ours = np.array([icc.srgb_into_profile(c, profile) for c in colours])
    assert np.abs(ours - _lcms_into(profile, colours)).max() <= 1.0


def test_white_stays_white_to_the_last_bit_and_damaged_curves_are_not_read() -> None:
    # the primaries' 5 digits put white 7e-5 off: 65533 in a 16-bit composite's default background
    assert icc.srgb_into_profile(WHITE, ADOBE_RGB) == (255.0, 255.0, 255.0)
    header_only = b"para" + bytes(4)
    damaged = [
        header_only + struct.pack(">H", 5) + bytes(2) + _s15(2.2),  # no such parametric function
        b"curv" + bytes(4) + struct.pack(">IH", 1, 0),  # a gamma of 0: every value 1
        b"curv" + bytes(4) + struct.pack(">I", 3) + struct.pack(">3H", 65535, 30000, 0),  # falling
        header_only + struct.pack(">H", 3) + bytes(2) + _s15(2.4, 0, 0.5, 0.1, 0.04),  # a = 0: flat
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor numpy's warnings of a power of 0 or a division
        for curve in damaged:
            profile = _with_curves(ADOBE_RGB, curve)
            assert icc.read_matrix_shaper(profile) is None
            assert icc.srgb_into_profile((0, 255, 0), profile) == (0.0, 255.0, 0.0)  # as given
    # tables from the connection space are what a colour management system converts through
    assert ADOBE_RGB[132:136] == b"cprt" and icc.read_matrix_shaper(ADOBE_RGB) is not None
    tagged = b"B2A0".join([ADOBE_RGB[:132], ADOBE_RGB[136:]])  # its first tag (the copyright) renamed
    assert icc.read_matrix_shaper(tagged) is None
