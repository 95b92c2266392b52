"""Foreground colour estimation for cut-outs: the old background's colour leaves soft edges."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pdseg_cli.data.foreground import estimate_foreground
from pdseg_cli.data.transforms import composite

RED, GREEN = np.array([200.0, 40.0, 30.0]), np.array([20.0, 190.0, 40.0])


def _scene(top: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """A red object with a soft, wavy 24-pixel edge band over green: I = a F + (1 - a) B, exactly."""
    h, w = 160, 240
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    edge = 120 + 10 * np.sin(yy / 9.0)
    alpha = np.clip((edge - xx) / 24.0 + 0.5, 0.0, 1.0)  # 1 left of the edge, 0 right of it
    image = alpha[..., None] * RED + (1 - alpha[..., None]) * GREEN
    return image * (top / 255.0), np.floor(alpha * 255).astype(np.uint8)


@pytest.mark.parametrize(("dtype", "top"), [(np.uint8, 255.0), (np.uint16, 65535.0), (np.float32, 1.0)])
def test_the_background_colour_leaves_fractional_pixels(dtype: type, top: float) -> None:
    image, byte_map = _scene(top)
    pixels = image.astype(dtype) if dtype == np.float32 else np.rint(image).astype(dtype)
    fg = estimate_foreground(pixels, byte_map)
    assert fg.dtype == pixels.dtype and fg.shape == pixels.shape
    soft = (byte_map > 25) & (byte_map < 230)
    red = RED * (top / 255.0)
    before = np.abs(pixels[soft].astype(np.float64) - red).mean() / top
    after = np.abs(fg[soft].astype(np.float64) - red).mean() / top
    assert before > 0.2 and after < before / 5, (before, after)  # the green bleed is gone
    opaque = byte_map == 255
    assert np.array_equal(fg[opaque], pixels[opaque])  # opaque pixels are untouched


def test_a_binary_map_changes_nothing() -> None:
    image, byte_map = _scene()
    pixels = np.rint(image).astype(np.uint8)
    hard = np.where(byte_map >= 128, 255, 0).astype(np.uint8)
    assert estimate_foreground(pixels, hard) is pixels


def test_composites_on_white_lose_the_green_fringe(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pdseg_cli.cli import app

    image, byte_map = _scene()
    pixels = np.rint(image).astype(np.uint8)
    plain = composite(pixels, byte_map, (255, 255, 255))
    refined = composite(estimate_foreground(pixels, byte_map), byte_map, (255, 255, 255))
    soft = (byte_map > 25) & (byte_map < 230)
    # the refined fringe is red fading to white, not red through green
    green_excess_plain = (plain[soft, 1].astype(int) - plain[soft, 0].astype(int)).mean()
    green_excess_refined = (refined[soft, 1].astype(int) - refined[soft, 0].astype(int)).mean()
    assert green_excess_refined < green_excess_plain - 40
    # the CLI switch is there and documented
    shown = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["predict", "--help"])
    assert "--no-refine-foreground" in shown.output
    cv2.imwrite(str(tmp_path / "x.png"), refined)


def test_bands_of_rows_give_the_whole_image_result() -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (300, 80, 3), dtype=np.uint8)
    soft = cv2.GaussianBlur((rng.random((300, 80)) > 0.5).astype(np.float32), (0, 0), 6)
    byte_map = (soft * 255).astype(np.uint8)
    byte_map[120:180] = 255  # a band with nothing fractional is skipped, and still exact
    whole = estimate_foreground(pixels, byte_map, band_rows=300)
    for rows in (7, 60, 97):  # narrower than the blurs' reach, too
        np.testing.assert_array_equal(estimate_foreground(pixels, byte_map, band_rows=rows), whole)
