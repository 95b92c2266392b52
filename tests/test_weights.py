"""The bundled demo weights: they load, describe themselves and segment a bundled photo."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import EXAMPLE_IMAGES, REPO

from pdseg_cli.engine.predict import Predictor
from pdseg_cli.errors import WeightsError
from pdseg_cli.model.build import load_checkpoint
from pdseg_cli.weights import ENV_VAR, default_weights, load_hashed


def test_bundled_checkpoint_describes_itself() -> None:
    ckpt = load_checkpoint(default_weights())
    assert ckpt.config.name == "pdseg-t"
    assert ckpt.train_size == 512  # the last stage's size, which predict uses by default
    assert "davis16-train" in ckpt.provenance["data"]
    assert ckpt.provenance["weights"] == "ema"
    assert ckpt.provenance["teacher_sha256"].startswith("7001d607")  # the ISNet of the model card
    assert "weights/README.md" in ckpt.provenance["summary"]


# at one torch thread, as the goldens were made: the runner's core count must not decide the sums'
# order (the module-scoped fixture keeps one thread for this module's later tests too)
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut", "rocket"])
def test_bundled_photos_keep_their_maps(name: str) -> None:
    """The maps ``pdseg predict examples/images`` writes with the bundled weights, pinned: a refactor
    of the model, the inference form or the map rule must not move them. Stored at one thread
    (``--threads 1``); other thread counts and CPUs sum in another order, which may move a pixel
    by one grey level. Regenerate with ``pdseg predict examples/images --threads 1 --out
    tests/golden/bundled_maps`` when the bundled weights change."""
    assert torch.get_num_threads() == 1
    rgb = cv2.cvtColor(cv2.imread(str(EXAMPLE_IMAGES / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
    got = Predictor(None, device="cpu", precision="fp32").predict(rgb).astype(int)
    want = cv2.imread(str(REPO / "tests" / "golden" / "bundled_maps" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    assert want.shape == got.shape
    diff = np.abs(got - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("name", ["chelsea.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"])
def test_bundled_maps_say_foreground_with_certainty(name: str) -> None:
    """Every bundled photo gets a map far above the old cap (the 0.1 weights never passed byte 161:
    their final classifier could not). These weights are not capped, but being undertrained they
    reach 242-252 on these photos, not 255 (weights/README.md)."""
    from pdseg_cli.model import load_model
    from pdseg_cli.model.pdseg import final_map_ceiling

    assert final_map_ceiling(load_model(default_weights())) is None
    rgb = cv2.cvtColor(cv2.imread(str(EXAMPLE_IMAGES / name)), cv2.COLOR_BGR2RGB)
    mask = Predictor(None, device="cpu", precision="fp32").predict(rgb)
    assert mask.max() >= 220 and mask.min() < 20  # a near-certain object, clear background somewhere


@pytest.mark.parametrize("size", [None, "full"])
def test_bundled_weights_segment_a_bundled_photo(size: str | None) -> None:
    rgb = cv2.cvtColor(cv2.imread(str(EXAMPLE_IMAGES / "chelsea.jpg")), cv2.COLOR_BGR2RGB)
    mask = Predictor(None, device="cpu", precision="fp32", size=size).predict(rgb)
    assert mask.dtype == np.uint8
    assert mask.shape == rgb.shape[:2] == (300, 451)
    # a real, non-constant map (the demo weights are weak: see weights/README.md)
    assert mask.min() < 20 and mask.max() > 100


def test_env_var_overrides_and_names_a_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsError, match="nope.pt, which does not exist"):
        default_weights()
    monkeypatch.setenv(ENV_VAR, str(tmp_path))  # a folder exists: it is not called missing
    with pytest.raises(WeightsError, match="a folder, not a weights file"):
        default_weights()


def test_a_wheel_carries_the_bundled_weights_and_every_module(tmp_path: Path) -> None:
    """`pip install .` / a wheel / a git URL: the weights travel inside the package."""
    import subprocess
    import sys
    import zipfile

    root = REPO
    build = [sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path)], check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("pdseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    bundled = default_weights().name
    assert f"pdseg_cli/bundled_weights/{bundled}" in names
    assert "pdseg_cli/bundled_weights/README.md" in names
    sources = {p.relative_to(root).as_posix() for p in (root / "pdseg_cli").rglob("*.py")}
    assert sources <= names, sorted(sources - names)  # pyproject's package list is complete
    # installed on its own (no source checkout around it), it finds them
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    code = "from pdseg_cli.weights import default_weights; print(default_weights())"
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    found = Path(out.stdout.strip())
    assert found.is_file() and str(found).startswith(str(target))


def test_a_file_replaced_while_loading_is_loaded_again_and_hashed_as_loaded(tmp_path: Path) -> None:
    """``pdseg eval --weights run/last.pt`` while the run saves over it: the report gave the new
    file's sha256 beside the scores of the old one (hashed after the model pass)."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")
    loads: list[bytes] = []

    def load(p: Path) -> bytes:
        loads.append(p.read_bytes())
        if len(loads) == 1:  # the training run's atomic save, as this one reads
            (tmp_path / ".new").write_bytes(b"new")
            os.replace(tmp_path / ".new", path)
        return loads[-1]

    assert load_hashed(path, load) == (b"new", hashlib.sha256(b"new").hexdigest())
    assert loads == [b"old", b"new"]


def test_a_file_that_keeps_changing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"0")

    def load(p: Path) -> None:
        (tmp_path / ".new").write_bytes(b"1")
        os.replace(tmp_path / ".new", p)

    with pytest.raises(WeightsError, match=f"weights {path} changed while it was being read, 3 times") as e:
        load_hashed(path, load)
    assert "copy it first" in e.value.hint


def test_the_predictor_keeps_the_hash_of_the_file_it_loaded() -> None:
    bundled = default_weights()
    assert Predictor(bundled, device="cpu").weights_sha256 == hashlib.sha256(bundled.read_bytes()).hexdigest()


def test_a_run_of_the_bundled_weights_says_they_are_a_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first ``pdseg predict`` writes the demo model's previews: the run says so and where the
    README shows a model whose cut-outs can be used; a model of the user's own gets no such line."""
    import shutil

    from helpers import run_cli

    from pdseg_cli.weights import is_bundled

    monkeypatch.delenv(ENV_VAR, raising=False)
    shutil.copy(EXAMPLE_IMAGES / "coffee.jpg", tmp_path / "coffee.jpg")
    said = " ".join(run_cli("predict", tmp_path / "coffee.jpg", "-o", tmp_path / "demo").output.split())
    assert "these are the bundled demo weights, whose masks are previews" in said
    assert "(README, 'Cut-outs to use today')" in said
    own = tmp_path / "own.pt"
    shutil.copy(default_weights(), own)
    assert is_bundled(default_weights()) and not is_bundled(own)
    said = " ".join(
        run_cli("predict", tmp_path / "coffee.jpg", "-w", own, "-o", tmp_path / "own").output.split()
    )
    assert "demo weights" not in said
