"""Fixtures for the export tests: tiny dense models (min and max configs of the default supernet), their ONNX
files, a folder of synthetic images, and engines built once per session."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy_nas.materialize import materialize
from deploy_nas.supernets import default_supernet

KINDS = ("min", "max")


@pytest.fixture(scope="session")
def dense_models() -> dict[str, torch.nn.Module]:
    """{"min": ..., "max": ...}: the smallest and largest subnets of the embedded default supernet, with its trained
    weights (untrained ViTs give near-tied logits, where any rounding flips the argmax and top-1 agreement tests
    nothing)."""
    supernet, space = default_supernet()
    return {kind: materialize(supernet, space.sample(random.Random(0), kind)).eval() for kind in KINDS}


@pytest.fixture(scope="session", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory: pytest.TempPathFactory, dense_models) -> dict:
    """Each dense model exported once (TorchScript exporter, simplified): {kind: OnnxExportResult}."""
    from deploy_nas.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    return {k: export_onnx(m, root / k / "model.onnx") for k, m in dense_models.items()}


def write_digits(root: Path, split: str, n: int) -> Path:
    """The first `n` images of a digits split as PNGs in ImageFolder layout (class folders 0-9)."""
    from PIL import Image

    from deploy_nas.data import IMAGENET_MEAN, IMAGENET_STD, digits_splits

    data = digits_splits(40, 3)[split]  # 40x40: the loader's resize to 32x32 is exercised
    pixels = (data.images.transpose(0, 2, 3, 1) * IMAGENET_STD + IMAGENET_MEAN).clip(0, 1) * 255
    for i in range(n):
        folder = root / str(data.labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i].round().astype(np.uint8)).save(folder / f"img{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder directory of 48 digits from the train split, as 40x40 PNGs."""
    return write_digits(tmp_path_factory.mktemp("calib"), "train", 48)


@pytest.fixture(scope="session")
def parity_batch(dense_models) -> np.ndarray:
    """The fixed parity batch: 64 embedded test images + 8 seeded random inputs."""
    from deploy_nas.data import embedded_images
    from deploy_nas.export.parity import parity_inputs

    spec = dense_models["min"].spec
    return parity_inputs(spec, embedded_images(64, spec.img_size, spec.in_chans), n_random=8)


@pytest.fixture(scope="session")
def reference_engines(dense_models) -> dict:
    """The torch reference Engine per kind."""
    from deploy_nas.export.backends.torch_backend import TorchEngine

    return {k: TorchEngine(m) for k, m in dense_models.items()}


@pytest.fixture(scope="session")
def engines(onnx_files, calib_dir, tmp_path_factory):
    """`engines(backend, precision, kind)`: the engine built from that kind's ONNX file, once per session (saved
    artifacts under `engines.out / kind`); all closed at the end."""
    from deploy_nas.export.backends import BuildConfig, get_backend

    out = tmp_path_factory.mktemp("engines")
    built: dict = {}

    def get(backend: str, precision: str, kind: str):
        key = (backend, precision, kind)
        if key not in built:
            config = BuildConfig(precision=precision, out_dir=out / kind, calib_dir=calib_dir, max_batch=96)
            built[key] = get_backend(backend).build(onnx_files[kind].path, config)
        return built[key]

    get.out = out
    yield get
    for engine in built.values():
        engine.close()
