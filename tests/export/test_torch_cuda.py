"""The torch CUDA path (marked gpu: skipped with its reason where torch sees no CUDA GPU): the relative-position
kernels (the compact form too), the supernet and dense model of every family, and the torch engine on a CUDA device
agree with the CPU in IEEE fp32."""
from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch

from deploy_nas.dense import build_dense
from deploy_nas.dense.vit import LOWERINGS
from deploy_nas.export.backends.torch_backend import TorchEngine, ieee_fp32
from deploy_nas.export.parity import check_parity
from deploy_nas.family import FAMILIES
from deploy_nas.kernels import relpos
from deploy_nas.materialize import materialize
from deploy_nas.spaces import PRESETS, SPACES
from deploy_nas.supernets.autoformer import AutoFormerArch, AutoFormerSupernet

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.mark.parametrize("grid, R", [(14, 14), (7, 3)])
def test_relpos_fast_forms_on_cuda_equal_the_cpu_reference(grid, R):
    g = torch.Generator().manual_seed(grid + R)
    iv, ih = relpos.relative_position_index(grid, R)
    n, k = grid * grid + 1, 2 * R + 2
    tv, th = torch.randn(k, 64, generator=g), torch.randn(k, 64, generator=g)
    q = torch.randn(2, 4, n, 64, generator=g)
    attn = torch.randn(2, 4, n, n, generator=g).softmax(-1)
    on = [t.to(CUDA) for t in (q, tv, th, iv, ih)]
    with ieee_fp32(CUDA):
        keys = relpos.key_logits(*on).cpu()
        values = relpos.value_term(attn.to(CUDA), *on[1:]).cpu()
    torch.testing.assert_close(keys, relpos.key_logits_reference(q, tv, th, iv, ih), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(values, relpos.value_term_reference(attn, tv, th, iv, ih), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["autoformer-t", "autoformer-s"])
def test_supernet_and_dense_model_on_cuda_match_the_cpu_at_224px(preset):
    cfg = PRESETS.get(preset).config
    space = SPACES.get(PRESETS.get(preset).space)
    supernet = AutoFormerSupernet(AutoFormerArch.from_space(space))
    supernet.reset_parameters(torch.Generator().manual_seed(0))
    supernet.eval()
    dense = materialize(supernet, cfg).eval()
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cpu = dense(x)
        with ieee_fp32(CUDA):
            sup_gpu = copy.deepcopy(supernet).to(CUDA)(x.to(CUDA), cfg).cpu()
            dense_gpu = copy.deepcopy(dense).to(CUDA)(x.to(CUDA)).cpu()
    torch.testing.assert_close(dense_gpu, cpu, rtol=0, atol=1e-4)
    torch.testing.assert_close(sup_gpu, cpu, rtol=0, atol=1e-4)
    assert torch.equal(dense_gpu.argmax(-1), cpu.argmax(-1))


def test_torch_engine_on_cuda_passes_the_fp32_parity_gate(dense_models, parity_batch, kind):
    reference = TorchEngine(copy.deepcopy(dense_models[kind]))
    engine = TorchEngine(copy.deepcopy(dense_models[kind]), device="cuda")
    result = check_parity(reference, engine, parity_batch)
    assert result.passed and result.max_abs <= 1e-4, (result.max_abs, result.failures)
    with engine.runner(parity_batch[:8]) as runner:  # the bench path: input placed once, synchronised runs
        wall_ns, times = runner.run_async(3)
    assert len(times) == 3 and wall_ns > 0 and engine.info()["device"] == "cuda"


@pytest.mark.parametrize("grid, R", [(14, 14), (7, 3), (6, 3), (14, 2)])
def test_compact_attention_on_cuda_equals_the_cpu_reference(grid, R):
    g = torch.Generator().manual_seed(grid * 10 + R)
    n, k = grid * grid + 1, 2 * R + 2
    q, kk, v = (torch.randn(2, 3, n, 64, generator=g) for _ in range(3))
    keys = (torch.randn(k, 64, generator=g), torch.randn(k, 64, generator=g))
    values = (torch.randn(k, 64, generator=g), torch.randn(k, 64, generator=g))
    iv, ih = relpos.relative_position_index(grid, R)
    attn = ((q @ kk.transpose(-2, -1) + relpos.key_logits_reference(q, *keys, iv, ih)) * 0.125).softmax(-1)
    ref = attn @ v + relpos.value_term_reference(attn, *values, iv, ih)
    index = relpos.CompactIndex(*(t.to(CUDA) for t in relpos.compact_index(grid, R)))
    with ieee_fp32(CUDA):
        out = relpos.compact_attention(q.to(CUDA), kk.to(CUDA), v.to(CUDA), 0.125,
                                       tuple(t.to(CUDA) for t in keys), tuple(t.to(CUDA) for t in values), index)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", FAMILIES.names())
def test_every_family_supernet_and_dense_model_on_cuda_match_the_cpu(name):
    """Each family's tiny space (min, max and two seeded configs; every relative-position lowering for the vit
    arch): the supernet and the dense model on CUDA equal the CPU dense model."""
    family = FAMILIES.get(name)
    space = SPACES.get(family.tiny_space)
    supernet = family.build_supernet(space, 0).eval()
    rng = random.Random(0)
    x = torch.randn(3, space.in_chans, space.img_size, space.img_size, generator=torch.Generator().manual_seed(2))
    for cfg in [space.sample(rng, "min"), space.sample(rng, "max"), space.sample(rng), space.sample(rng)]:
        dense = materialize(supernet, cfg).eval()
        variants = [dense]
        if dense.spec.arch == "vit" and dense.spec.body.max_relative_position:
            variants = [build_dense(dataclasses.replace(dense.spec, body=dataclasses.replace(
                dense.spec.body, relpos_lowering=lowering)), dense.state_dict()).eval() for lowering in LOWERINGS]
        with torch.inference_mode():
            cpu = dense(x)
            with ieee_fp32(CUDA):
                outs = [copy.deepcopy(supernet).to(CUDA)(x.to(CUDA), cfg).cpu()]
                outs += [copy.deepcopy(m).to(CUDA)(x.to(CUDA)).cpu() for m in variants]
        for out in outs:
            torch.testing.assert_close(out, cpu, rtol=0, atol=1e-4)
