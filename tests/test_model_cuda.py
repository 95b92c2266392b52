"""The model on a GPU: mixed precision keeps the NMF finite and in float32, and CUDA agrees with the CPU.

Skipped where CUDA is not available (CI). On a GPU machine: ``python -m pytest tests/test_model_cuda.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from pdseg_cli.model import PDSeg, create_model
from pdseg_cli.model.ham import NMF2D

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def model_pair() -> tuple[PDSeg, PDSeg]:
    torch.manual_seed(0)
    cpu = create_model("pdseg-t")
    gpu = create_model("pdseg-t").cuda()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


@pytest.fixture
def no_tf32() -> Iterator[None]:
    # cuDNN convolutions default to TF32 (10-bit mantissa); compare true fp32 with the CPU
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.usefixtures("no_tf32")
def test_cuda_matches_cpu_in_fp32(model_pair: tuple[PDSeg, PDSeg]) -> None:
    cpu, gpu = model_pair
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        ref = cpu(x)
        out = gpu(x.cuda()).cpu()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * (1 + ref.abs().max().item()))


def test_cuda_eval_is_deterministic(model_pair: tuple[PDSeg, PDSeg]) -> None:
    _, gpu = model_pair
    x = torch.randn(1, 3, 256, 256, device="cuda")
    with torch.no_grad():
        assert torch.equal(gpu(x), gpu(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nmf_stays_float32_under_cuda_autocast(dtype: torch.dtype) -> None:
    nmf = NMF2D(512, 64, train_steps=6, eval_steps=7, seed=0).cuda().eval()
    # post-ReLU activations at N = 128^2: the sums over N overflow fp16 (docs/model.md, 'NMF precision')
    x = (torch.rand(1, 512, 128, 128, device="cuda") * 4).to(dtype)
    with torch.autocast("cuda", dtype=dtype):
        out = nmf(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert torch.equal(out, nmf(x.float()).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_finite_under_cuda_autocast(model_pair: tuple[PDSeg, PDSeg], dtype: torch.dtype) -> None:
    _, gpu = model_pair
    x = torch.randn(1, 3, 512, 512, device="cuda")
    with torch.no_grad():
        ref = gpu(x)
        with torch.autocast("cuda", dtype=dtype):
            out = gpu(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * (1 + ref.abs().max())


def test_training_step_under_fp16_autocast() -> None:
    torch.manual_seed(0)
    model = create_model("pdseg-t").cuda().train()
    scaler = torch.amp.GradScaler("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(2, 3, 256, 256, device="cuda")
    target = (torch.rand(2, 1, 256, 256, device="cuda") > 0.5).float()
    with torch.autocast("cuda", dtype=torch.float16):
        levels = model(x, return_levels=True)
    loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(lv.float(), target) for lv in levels)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_half_model_on_cuda(model_pair: tuple[PDSeg, PDSeg]) -> None:
    _, gpu = model_pair
    half = create_model("pdseg-t").cuda()
    half.load_state_dict(gpu.state_dict())
    half.half()
    x = torch.randn(1, 3, 256, 256, device="cuda")
    with torch.no_grad():
        out = half(x.half())
        ref = gpu(x)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * (1 + ref.abs().max())
    assert all(m.eval_bases.dtype == torch.float32 for m in half.modules() if isinstance(m, NMF2D))


def test_auto_precision_is_bf16_only_where_this_gpu_has_it_natively() -> None:
    from pdseg_cli import runtime

    gpu = torch.device("cuda", torch.cuda.device_count() - 1)  # the last GPU: not always the current
    native = torch.cuda.get_device_capability(gpu) >= (8, 0)
    assert runtime.resolve_precision("auto", gpu) == ("bf16" if native else "fp32")
    assert (runtime.emulated_precision_note(gpu, "bf16") is None) == native


def test_folding_a_cuda_model_gives_the_cpu_models_weights(model_pair: tuple[PDSeg, PDSeg]) -> None:
    from pdseg_cli.model.optimize import optimize

    cpu, gpu = model_pair
    on_cpu, on_gpu = optimize(cpu).state_dict(), optimize(gpu).state_dict()
    assert all(v.device.type == "cuda" for v in on_gpu.values())
    assert all(torch.equal(on_gpu[k].cpu(), v) for k, v in on_cpu.items())  # folded on the CPU alike


@pytest.mark.slow  # compiles pdseg-tiny: about a minute
def test_tta_with_cuda_graphs_keeps_the_first_pass() -> None:
    import numpy as np

    from pdseg_cli.engine.predict import Predictor

    torch.manual_seed(0)
    model = create_model("pdseg-tiny")
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    eager = Predictor(model, device="cuda", precision="fp32", size=64, tta=True)
    graphs = Predictor(model, device="cuda", precision="fp32", size=64, tta=True, compile="reduce-overhead")
    # warm-up, recording, replays: "accessing tensor output of CUDAGraphs that has been overwritten
    # by a subsequent run" came as soon as the mirrored pass replayed the first pass's graph
    for _ in range(3):
        got = graphs.predict(image)
    assert np.abs(got.astype(int) - eager.predict(image).astype(int)).max() <= 1
