"""Colours into an image's own ICC profile: ``--bg`` is an sRGB colour (a name, ``#rrggbb``, as on
the web), while a composite's pixels are in the colours of the profile it carries (an Adobe RGB
scan, a Display P3 phone photo). Written as given, a saturated ``--bg`` showed more saturated in
such a composite than the colour asked for.

Only RGB matrix/TRC profiles (three primaries and three tone curves: Adobe RGB, Display P3,
ProPhoto, sRGB itself, what cameras and phones embed) are read, by the ICC specification
(ICC.1:2010, sections 7 and 10); a profile with lookup tables from the connection space (which
a colour management system converts through), or with a damaged curve, is not, and the colour is
then written as given. The conversion is relative colorimetric, scaled so that white stays white.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# sRGB's primaries in the ICC's D50 connection space (the Bradford-adapted matrix of the sRGB
# profiles that ship with colour-managed systems): linear sRGB -> XYZ (D50)
_SRGB_TO_XYZ_D50 = np.array(
    [
        [0.4360747, 0.3850649, 0.1430804],
        [0.2225045, 0.7168786, 0.0606169],
        [0.0139322, 0.0971045, 0.7141733],
    ]
)
_HEADER_BYTES = 128
_GRID = np.linspace(0.0, 1.0, 4097)  # the encoded values a tone curve is sampled and inverted at
_PRECISION = 5e-5  # of a linear value computed from s15Fixed16 primaries


@dataclass(frozen=True)
class MatrixShaper:
    """An RGB matrix/TRC profile: linear RGB -> XYZ (D50) by ``matrix``; ``curves`` give each
    channel's linear value at the encoded values of ``_GRID`` (0..1)."""

    matrix: np.ndarray  # (3, 3): columns are the red, green and blue primaries' XYZ
    curves: tuple[np.ndarray, ...]  # each curve's linear values at _GRID, rising from 0 to 1


def read_matrix_shaper(profile: bytes) -> MatrixShaper | None:
    """The primaries and tone curves of an RGB ICC profile; None for any other profile (gray,
    CMYK, lookup tables only) or one that cannot be read."""
    try:
        return _read(profile)
    except (struct.error, ValueError, IndexError, KeyError, ZeroDivisionError):
        return None


def srgb_into_profile(colour: Sequence[float], profile: bytes | None) -> tuple[float, ...]:
    """An sRGB colour (0..255 a channel) as the same colour in ``profile``'s RGB (0..255 a channel,
    not rounded, so that 16-bit outputs keep its precision). Given back as it is without a profile
    or with one :func:`read_matrix_shaper` does not read; clipped to the profile's gamut."""
    shaper = read_matrix_shaper(profile) if profile else None
    if shaper is None:
        return tuple(float(c) for c in colour)
    encoded = np.asarray(colour, dtype=np.float64) / 255.0
    linear = np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)
    # relative to white: sRGB's white lands on the profile's (1, 1, 1) exactly. Its primaries are
    # stored to 5 digits, so unscaled it came out 7e-5 off, which a 16-bit or float composite kept
    # (65533 for 65535); a profile whose primaries add up to another white gets white too
    white = np.linalg.solve(shaper.matrix, _SRGB_TO_XYZ_D50 @ np.ones(3))
    target = np.linalg.solve(shaper.matrix, _SRGB_TO_XYZ_D50 @ linear) / white
    # a channel that should be exactly 0 (sRGB's red is Adobe RGB's red) comes out 1e-5 off, which
    # the steep start of a tone curve makes a level or two: within the stored precision, it is 0
    target[np.abs(target) < _PRECISION] = 0.0
    target = np.clip(target, 0.0, 1.0)
    out = []
    for value, forward in zip(target, shaper.curves, strict=True):
        out.append(float(np.interp(value, forward, _GRID)) * 255.0)  # the curve's inverse
    return tuple(out)


def _read(profile: bytes) -> MatrixShaper | None:
    if len(profile) < _HEADER_BYTES + 4 or profile[16:20] != b"RGB " or profile[20:24] != b"XYZ ":
        return None
    (count,) = struct.unpack_from(">I", profile, _HEADER_BYTES)
    tags: dict[bytes, bytes] = {}
    for i in range(count):
        sig, offset, size = struct.unpack_from(">4sII", profile, _HEADER_BYTES + 4 + 12 * i)
        tags[sig] = profile[offset : offset + size]
    names = (b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC")
    # a profile with tables from the connection space (B2A*) is converted through them by a colour
    # management system, not through its matrix: not read, rather than converted otherwise
    if not all(name in tags for name in names) or any(name.startswith(b"B2A") for name in tags):
        return None
    columns = [_xyz(tags[name]) for name in names[:3]]
    matrix = np.array(columns).T
    if abs(np.linalg.det(matrix)) < 1e-9:
        return None
    curves = []
    for name in names[3:]:
        with np.errstate(all="ignore"):
            forward = _curve(tags[name])(_GRID)
        # a damaged curve (falling, flat, not from 0 to 1, a gamma of 0): not read
        if not np.all(np.isfinite(forward)) or np.any(np.diff(forward) < -1e-9):
            return None
        if forward[0] > 0.1 or forward[-1] < 0.9:
            return None
        curves.append(forward)
    return MatrixShaper(matrix, tuple(curves))


def _s15(data: bytes, at: int) -> float:
    (raw,) = struct.unpack_from(">i", data, at)
    return raw / 65536.0


def _xyz(data: bytes) -> tuple[float, float, float]:
    if data[:4] != b"XYZ ":
        raise ValueError("not an XYZ tag")
    return _s15(data, 8), _s15(data, 12), _s15(data, 16)


def _curve(data: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A tone curve tag (``curv``: identity, a gamma or a table; ``para``: one of the five
    parametric functions) as a function of the encoded value."""
    kind = data[:4]
    if kind == b"curv":
        (n,) = struct.unpack_from(">I", data, 8)
        if n == 0:
            return lambda x: x
        if n == 1:
            (gamma_raw,) = struct.unpack_from(">H", data, 12)
            gamma = gamma_raw / 256.0
            return lambda x: np.power(x, gamma)
        table = np.array(struct.unpack_from(f">{n}H", data, 12), dtype=np.float64) / 65535.0
        points = np.linspace(0.0, 1.0, n)
        return lambda x: np.interp(x, points, table)
    if kind == b"para":
        (function,) = struct.unpack_from(">H", data, 8)
        n_params = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}[function]
        g, a, b, c, d, e, f = [_s15(data, 12 + 4 * i) for i in range(n_params)] + [0.0] * (7 - n_params)
        if function in (1, 2) and a == 0:  # a damaged profile: its curve starts at -b / a
            raise ValueError("a parametric curve with a = 0")
        if function == 0:
            return lambda x: np.power(x, g)
        if function == 1:  # CIE 122-1966
            return lambda x: np.where(x >= -b / a, np.power(np.maximum(a * x + b, 0.0), g), 0.0)
        if function == 2:  # IEC 61966-3
            return lambda x: np.where(x >= -b / a, np.power(np.maximum(a * x + b, 0.0), g) + c, c)
        if function == 3:  # IEC 61966-2-1 (sRGB's own)
            return lambda x: np.where(x >= d, np.power(np.maximum(a * x + b, 0.0), g), c * x)
        return lambda x: np.where(x >= d, np.power(np.maximum(a * x + b, 0.0), g) + e, c * x + f)
    raise ValueError("not a tone curve")
