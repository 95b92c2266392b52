"""The bundled demo weights: they load, describe themselves and segment a bundled photo."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pdseg_cli.engine.predict import Predictor
from pdseg_cli.errors import WeightsError
from pdseg_cli.model.build import load_checkpoint
from pdseg_cli.weights import ENV_VAR, default_weights

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def test_bundled_checkpoint_describes_itself() -> None:
    ckpt = load_checkpoint(default_weights())
    assert ckpt.config.name == "pdseg-t"
    assert ckpt.train_size == 256
    assert "davis16-train" in ckpt.provenance["data"]
    assert ckpt.provenance["weights"] == "ema"


@pytest.mark.parametrize("size", [None, "full"])
def test_bundled_weights_segment_a_bundled_photo(size: str | None) -> None:
    rgb = cv2.cvtColor(cv2.imread(str(EXAMPLES / "chelsea.jpg")), cv2.COLOR_BGR2RGB)
    mask = Predictor(None, device="cpu", precision="fp32", size=size).predict(rgb)
    assert mask.dtype == np.uint8
    assert mask.shape == rgb.shape[:2] == (300, 451)
    # a real, non-constant map (the demo weights are weak: see weights/README.md)
    assert mask.min() < 20 and mask.max() > 100


def test_env_var_overrides_and_names_a_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsError, match="nope.pt"):
        default_weights()
