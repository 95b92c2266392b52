"""The optimised inference form gives the plain path's logits, and leaves the plain model alone.

The structures compared are generated: every variant of ``config.VARIANTS`` (one block a stage),
every registered decoder with and without residual maps and with one or eight channels per
GroupNorm group, and pdseg-tiny with each other structural ModelConfig option changed; a new
config field must be placed in one of those lists or among the ones that do not change eval-mode
maths. Each is compared at a small and an odd size, with BatchNorm statistics, norm affines, layer
scales and classifiers drawn away from their initial values so that every fold is exercised.
Tolerance: max |delta logit| <= 1e-4 in fp32 (issue 7). Every model part has an inference form, or
says which part's form folds it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import pdseg_cli
from pdseg_cli.config import VARIANTS, ModelConfig, get_config
from pdseg_cli.model import PDSeg, create_model, load_model, save_checkpoint
from pdseg_cli.model.optimize import FastPDSeg, fused_ops_available, optimize
from pdseg_cli.model.registry import DECODERS

TOL = 1e-4
SIZES = [(64, 96), (97, 131)]


def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move BN statistics, norm affines, layer scales and classifiers off their initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if "layer_scale" in name:  # around the 0.01 init: larger ones blow random deep nets up
                p.copy_(torch.rand(p.shape, generator=g) * 0.02 + 0.005)
            elif "classifier.weight" in name:
                p.normal_(0.0, 0.1, generator=g)
    return model


def _model(config: ModelConfig | str, seed: int = 0) -> PDSeg:
    torch.manual_seed(seed)
    return _perturb(create_model(config), seed)  # type: ignore[return-value]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> PDSeg:
    return _model("pdseg-tiny")


# ModelConfig fields that do not change the eval-mode network (training only, or identities in eval)
NOT_STRUCTURAL = {"name", "drop_path_rate", "dropout", "ham_train_steps"}
# each other field, changed on pdseg-tiny (decoder, residual_maps and min_group_channels: see below)
TOGGLES: dict[str, object] = {
    "embed_dims": (8, 16, 24, 32),
    "depths": (2, 1, 1, 2),
    "mlp_ratios": (4, 4, 2, 1),
    "decoder_widths": (32, 16, 16, 8),
    "ham_rank": 1,
    "ham_eval_steps": 0,
    "ham_seed": 5,
    "norm_groups": 4,
    "pad_multiple": 64,
}
DECODER_OPTIONS = {"decoder", "residual_maps", "min_group_channels"}


def _structures() -> dict[str, ModelConfig]:
    """Every variant (one block a stage), every decoder x options, and each toggle on pdseg-tiny."""
    cases = {name: dataclasses.replace(cfg, depths=(1, 1, 1, 1)) for name, cfg in VARIANTS.items()}
    tiny = get_config("pdseg-tiny")
    for name, entry in DECODERS.items():
        for residual in (False, True):
            for min_group in (1, 8):
                cases[f"tiny-{name}-residual{int(residual)}-group{min_group}"] = dataclasses.replace(
                    tiny,
                    decoder=name,
                    decoder_widths=tiny.decoder_widths[: entry.widths],
                    residual_maps=residual,
                    min_group_channels=min_group,
                )
    for field, value in TOGGLES.items():
        cases[f"tiny-{field}"] = dataclasses.replace(tiny, **{field: value})
    return cases


STRUCTURES = _structures()


def test_every_config_field_is_exercised() -> None:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert fields == NOT_STRUCTURAL | set(TOGGLES) | DECODER_OPTIONS


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_same_logits_as_plain_path(name: str) -> None:
    model = _model(STRUCTURES[name])
    fast = optimize(model)
    for h, w in SIZES:
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.inference_mode():
            want, got = model(x), fast(x)
        assert got.shape == want.shape == (1, 1, h, w)
        assert got.dtype == torch.float32
        assert _max_diff(got, want) <= TOL, f"{name} {h}x{w}"
    assert fast.notes == ()  # every part was folded


@pytest.mark.parametrize("name", ["tiny-progressive-residual1-group1", "segnext-t"])
def test_as_close_to_exact_maths_as_the_plain_path(name: str) -> None:
    """Against a float64 copy of the plain model: the fast form is within 1e-4 of exact maths."""
    model = _model(STRUCTURES[name])
    exact = _model(STRUCTURES[name]).double()
    fast = optimize(model)
    x = torch.randn(1, 3, 97, 131)
    with torch.inference_mode():
        truth = exact(x.double())
        assert _max_diff(fast(x).double(), truth) <= TOL
        assert _max_diff(model(x).double(), truth) <= TOL


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bands", [None, (0, 1)])
def test_every_code_path_agrees(
    tiny: PDSeg, channels_last: bool, fused: bool, bands: tuple[int, int] | None
) -> None:
    """Layouts, fused oneDNN vs plain operators, and the MLP done in bands of rows (forced tiny)."""
    fast = optimize(tiny, channels_last=channels_last)
    assert isinstance(fast, FastPDSeg)
    fast.use_fused_ops = fast.use_fused_ops and fused
    fast.mlp_bands = bands
    for b, h, w in [(2, 64, 96), (1, 97, 131), (1, 160, 33)]:
        x = torch.randn(b, 3, h, w)
        with torch.inference_mode():
            assert _max_diff(fast(x), tiny(x)) <= TOL


def test_return_levels(tiny: PDSeg) -> None:
    fast = optimize(tiny)
    x = torch.randn(1, 3, 97, 131)
    with torch.inference_mode():
        want = tiny(x, return_levels=True)
        got = fast(x, return_levels=True)
        final = fast(x)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape == (1, 1, 97, 131)
        assert _max_diff(a, b) <= TOL
    assert torch.equal(got[-1], final)


def test_bundled_trained_weights_predict_the_same() -> None:
    """Trained weights (the bundled demo checkpoint, when present) on a real photo."""
    import cv2

    from pdseg_cli.errors import WeightsError
    from pdseg_cli.weights import default_weights

    try:
        path = default_weights()
    except WeightsError:
        pytest.skip("no bundled or $PDSEG_WEIGHTS checkpoint")
    model = load_model(path)
    fast = optimize(model)
    image = cv2.imread(str(Path(__file__).resolve().parents[1] / "examples" / "images" / "chelsea.jpg"))
    rgb = cv2.resize(image, (160, 96))[:, :, ::-1].astype("float32")
    mean = torch.tensor(model.normalization["mean"], dtype=torch.float32)
    std = torch.tensor(model.normalization["std"], dtype=torch.float32)
    x = ((torch.from_numpy(rgb.copy()) - mean) / std).permute(2, 0, 1)[None]
    with torch.inference_mode():
        assert _max_diff(fast(x), model(x)) <= TOL


def test_original_model_untouched_and_independent() -> None:
    model = _model("pdseg-tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize(model)
    assert model.training  # its mode is kept
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    # the fast form is in eval mode, needs no gradients, and owns its tensors
    assert not fast.training
    assert not any(p.requires_grad for p in fast.parameters())
    own = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    assert not own & {p.data_ptr() for p in fast.parameters()}
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        first = fast(x)
    # training the original afterwards does not move the fast form
    loss = model(x).mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with torch.inference_mode():
        assert torch.equal(fast(x), first)
    # eval-mode semantics whatever the mode of the source model
    model.load_state_dict(before)
    with torch.inference_mode():
        assert _max_diff(fast(x), model.eval()(x)) <= TOL


def test_checkpoint_saved_before_optimisation_loads_and_predicts_the_same(tmp_path: os.PathLike[str]) -> None:
    model = _model("pdseg-tiny")
    path = save_checkpoint(model, f"{tmp_path}/tiny.pt", train_size=64, data="synthetic")
    loaded = load_model(path)
    fast = optimize(loaded)
    assert fast.config == model.config
    assert fast.train_size == 64
    assert dict(fast.normalization) == dict(loaded.normalization)
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        assert _max_diff(fast(x), model(x)) <= TOL
        assert _max_diff(fast(x), loaded(x)) <= TOL
    # the loaded model is still a plain, savable PDSeg with the same keys
    assert set(loaded.state_dict()) == set(model.state_dict())


class _NoFloat64(torch.Tensor):
    """A tensor on a pretend device that, like Apple's MPS, has no float64: any operation on it that
    gives float64 raises MPS's error; ``.cpu()`` gives a plain CPU tensor."""

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: object,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        from torch.utils._pytree import tree_flatten, tree_map

        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if func is torch.Tensor.cpu:
            return out.as_subclass(torch.Tensor)
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_flatten(out)[0]):
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype")  # MPS's own words
        return tree_map(lambda t: t.as_subclass(cls) if type(t) is torch.Tensor else t, out)


def _on_device_without_float64(model: nn.Module) -> nn.Module:
    for m in model.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                moved = p.detach().clone().as_subclass(_NoFloat64)
                m._parameters[name] = nn.Parameter(moved, p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = b.clone().as_subclass(_NoFloat64)
    return model


# every fold: stem, embeddings, blocks, the progressive decoder's squeeze and classifier, light_ham's
@pytest.mark.parametrize(
    "name",
    ["pdseg-tiny", "tiny-depths", "tiny-progressive-residual1-group1", "tiny-light_ham-residual0-group8"],
)
def test_folding_runs_no_float64_maths_on_the_model_device(name: str) -> None:
    # --device mps: BN folding widened the weights to float64 where they were, and MPS has none
    # (a traceback in predict, eval, benchmark and --teacher); the maths runs on the CPU now
    with pytest.raises(TypeError, match="float64"):  # the pretend device refuses float64 indeed
        _on_device_without_float64(nn.Linear(2, 2)).weight.double()
    reference = optimize(_model(STRUCTURES[name])).state_dict()
    folded = optimize(_on_device_without_float64(_model(STRUCTURES[name]))).state_dict()
    assert folded.keys() == reference.keys()
    # the same float32 bits as folding on the CPU model itself
    for key, value in reference.items():
        assert torch.equal(folded[key].as_subclass(torch.Tensor), value), key


def test_grad_mode_and_requires_grad_inputs_fall_back(tiny: PDSeg) -> None:
    fast = optimize(tiny)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert isinstance(fast, FastPDSeg) and not fast._fuse(x)
    out = fast(x)  # plain operators, with autograd through the input
    out.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        assert _max_diff(out.detach(), tiny(x.detach())) <= TOL


def test_fused_ops_check_is_honest() -> None:
    available = fused_ops_available()
    assert isinstance(available, bool)
    fast = optimize(create_model("pdseg-tiny"))
    assert isinstance(fast, FastPDSeg)
    assert fast.use_fused_ops == available
    assert fast._fuse(torch.zeros(1, 3, 32, 32)) == available


@pytest.mark.skipif(not torch.amp.is_autocast_available("cpu"), reason="no CPU autocast in this torch")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_is_finite_and_close(tiny: PDSeg, precision: str) -> None:
    fast = optimize(tiny, precision=precision)
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        got, want = fast(x), tiny(x)
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all()
    assert float((got.sigmoid() - want.sigmoid()).abs().max()) < 0.05


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_trace_uses_plain_operators(tiny: PDSeg) -> None:
    """Under torch.jit.trace (what ONNX export runs) no oneDNN-only operator is recorded."""
    fast = optimize(tiny, channels_last=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(fast, x, check_trace=False)
        assert "mkldnn" not in str(traced.inlined_graph)
        assert _max_diff(traced(x), tiny(x)) <= TOL


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("half", [False, True])
def test_onnx_export_of_the_fast_form(tiny: PDSeg, tmp_path: os.PathLike[str], half: bool) -> None:
    """The export engine accepts the fast form (channels_last=False), fp32 and fp16, dynamic H/W."""
    pytest.importorskip("onnxruntime")
    from pdseg_cli.engine.export import export_model

    fast = optimize(tiny, channels_last=False)
    report = export_model(
        fast,
        f"{tmp_path}/tiny.onnx",
        "onnx",
        variant="pdseg-tiny",
        config=tiny.config.to_dict(),
        normalization=dict(tiny.normalization),
        half=half,
        check_shapes=[(1, 3, 64, 64), (2, 3, 97, 131)],
    )
    assert all(c.passed for c in report.checks)


def test_bad_arguments(tiny: PDSeg) -> None:
    with pytest.raises(ValueError, match="precision"):
        optimize(tiny, precision="int8")
    with pytest.raises(TypeError, match="PDSeg"):
        optimize(nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="already optimised"):
        optimize(optimize(tiny))
    fast = optimize(tiny)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        fast(torch.zeros(1, 4, 32, 32))


def test_public_api() -> None:
    assert pdseg_cli.optimize is optimize


@pytest.mark.slow
def test_compile_flag(tiny: PDSeg) -> None:
    """torch.compile of the fast form (minutes on a small CPU: slow test)."""
    compiled = optimize(tiny, compile=True)
    assert compiled.config == tiny.config  # attributes pass through the compiled wrapper
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        assert _max_diff(compiled(x), tiny(x)) <= TOL


def test_save_checkpoint_refuses_the_optimised_form(tmp_path: Path) -> None:
    from pdseg_cli.model import create_model, save_checkpoint

    fast = optimize(create_model("pdseg-tiny"))
    with pytest.raises(TypeError, match="save the model you passed to optimize"):
        save_checkpoint(fast, tmp_path / "fast.pt")
    assert not (tmp_path / "fast.pt").exists()


def test_compile_modes_and_failures_without_compiling(tiny: PDSeg, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compile plumbing, with torch.compile stubbed (a real compile is the slow test above)."""
    from pdseg_cli.errors import NotAvailableError
    from pdseg_cli.model.build import unwrap_model
    from pdseg_cli.model.optimize import CompiledPDSeg, FastPDSeg

    seen: list[object] = []

    def fake_compile(module: nn.Module, mode: str | None = None) -> nn.Module:
        seen.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        want = tiny(x)
        for compile_arg, mode in ((True, None), ("default", None), ("reduce-overhead", "reduce-overhead")):
            compiled = optimize(tiny, compile=compile_arg)
            assert isinstance(compiled, CompiledPDSeg) and seen[-1] == mode
            assert compiled.config == tiny.config and compiled.train_size == tiny.train_size
            assert compiled.level_strides == tiny.level_strides
            assert isinstance(unwrap_model(compiled), FastPDSeg)  # so save_checkpoint refuses it
            assert _max_diff(compiled(x), want) <= TOL
    with pytest.raises(ValueError, match="compile must be one of"):
        optimize(tiny, compile="fastest")

    def failing_compile(module: nn.Module, mode: str | None = None) -> object:
        def run(*args: object) -> None:
            raise torch._dynamo.exc.TorchDynamoException("InvalidCxxCompiler: No working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    broken = optimize(tiny, compile="max-autotune")
    with pytest.raises(NotAvailableError, match=r"torch.compile \(max-autotune\) failed") as info:
        broken(x)
    assert "No working C++ compiler" in info.value.message and "without --compile" in (info.value.hint or "")

    # Inductor out of memory while compiling a size: the OOM itself comes out, so that the
    # caller's fallback (one image at a time, a smaller size) takes it, not "compile failed"
    def oom_compile(module: nn.Module, mode: str | None = None) -> object:
        def run(*args: object) -> None:
            try:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            except torch.cuda.OutOfMemoryError as oom:
                raise torch._dynamo.exc.TorchDynamoException("backend='inductor' raised:") from oom

        return run

    monkeypatch.setattr(torch, "compile", oom_compile)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="Tried to allocate"):
        optimize(tiny, compile="max-autotune")(x)


def test_resolve_compile() -> None:
    from pdseg_cli.errors import InputError
    from pdseg_cli.runtime import resolve_compile

    assert resolve_compile(None) is None and resolve_compile(False) is None
    assert resolve_compile("off") is None and resolve_compile(" OFF ") is None
    assert resolve_compile(True) == "default"
    assert resolve_compile("Reduce-Overhead") == "reduce-overhead"
    with pytest.raises(InputError, match="not a torch.compile mode"):
        resolve_compile("turbo")


def test_nmf_in_place_row_blocks_match_the_plain_nmf(tiny: PDSeg, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-place coefficient update in row blocks (several, the last one shorter), batch 2."""
    import pdseg_cli.model.ham as ham

    monkeypatch.setattr(ham, "NMF_ROWS", 48)  # 10 x 13 = 130 rows: blocks of 48, 48 and 34
    fast = optimize(tiny)
    level, fast_level = tiny.decoder.levels[-1], fast.decoder.levels[-1]
    plain_nmf = level.hamburger.ham.eval()
    c = plain_nmf.channels
    x = torch.rand(2, c, 10, 13, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = plain_nmf(x)
        got = fast_level.nmf(x.contiguous(memory_format=torch.channels_last))
        assert _max_diff(got, want) <= 1e-5
        mine = x.contiguous(memory_format=torch.channels_last).clone(memory_format=torch.channels_last)
        overwritten = fast_level.nmf(mine, overwrite_input=True)  # the result goes into `mine`
        assert overwritten.data_ptr() == mine.data_ptr() and _max_diff(overwritten, want) <= 1e-5


def _model_module_classes() -> list[type[nn.Module]]:
    """Every nn.Module subclass defined in a module of pdseg_cli.model."""
    import importlib
    import inspect
    import pkgutil

    import pdseg_cli.model

    classes = []
    for info in pkgutil.iter_modules(pdseg_cli.model.__path__):
        module = importlib.import_module(f"pdseg_cli.model.{info.name}")
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__:
                classes.append(obj)
    return classes


def test_every_model_part_has_an_inference_form() -> None:
    """A part has ``fast()``, is a registered decoder with a fast form, or names the part whose form
    folds it (``FOLDED_BY``); the forms themselves are InferenceForm subclasses."""
    from pdseg_cli.model.fusion import InferenceForm

    classes = {cls.__name__: cls for cls in _model_module_classes()}
    registered = {entry.cls: entry for entry in DECODERS.values()}

    def has_form(cls: type[nn.Module]) -> bool:
        if cls in registered:
            return registered[cls].fast is not None
        return callable(getattr(cls, "fast", None))

    missing = []
    for name, cls in classes.items():
        if issubclass(cls, InferenceForm) or has_form(cls):
            continue
        parent = getattr(cls, "FOLDED_BY", None)
        if parent is None or parent not in classes or not has_form(classes[parent]):
            missing.append(name)
    assert not missing, f"no inference form and no FOLDED_BY naming a part that has one: {missing}"
    assert {"PDSeg", "MSCAN", "Block", "NMF2D", "HamLevel", "ProgressiveDecoder"} <= classes.keys()


def test_an_encoder_part_without_inference_form_is_kept_plain_with_a_note(tiny: PDSeg) -> None:
    import copy

    from pdseg_cli.model.fusion import KeptPlain

    class Doubler(nn.Module):  # a stage norm of another kind: no fast()
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0

    model = copy.deepcopy(tiny)
    model.encoder.norm2 = Doubler()
    fast = optimize(model)
    assert isinstance(fast, FastPDSeg) and isinstance(fast.encoder.norms[1], KeptPlain)
    assert len(fast.notes) == 1 and fast.notes[0].startswith("encoder.norm2 (Doubler) has no inference form")
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        assert _max_diff(fast(x), model(x)) <= TOL
