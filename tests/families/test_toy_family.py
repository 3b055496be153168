"""The proof that the family protocol is real: a toy family that looks nothing like a ViT (a conv stem, two stages of
token MLPs with a 2x2 max-pool of the token grid between them, a learned per-channel gate folded into weights at
materialization), defined and registered only in this module, goes through `extract` -> `run --dense` ->
onnxruntime and OpenVINO parity with the real CLI, in process, with no change to any other file."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import Tensor, nn

from deploy_nas.cli import main
from deploy_nas.console import Table
from deploy_nas.dense import ARCHS, load_dense
from deploy_nas.dense.spec import DenseSpec
from deploy_nas.errors import InvalidSubnetConfig
from deploy_nas.family import FAMILIES, FixedConfig, SubnetState
from deploy_nas.folding import ScaleFold
from deploy_nas.spaces import SPACES
from deploy_nas.supernets import save_supernet
from tests.families.test_protocol import scaled_random_

NAME = "toy"


@dataclass(frozen=True)
class ToyConfig:
    width: int
    depth1: int
    depth2: int
    family: ClassVar[str] = NAME

    def to_dict(self) -> dict[str, Any]:
        return {"family": NAME, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ToySpace:
    name: str
    widths: tuple[int, ...] = (8, 12, 16)
    depths: tuple[int, ...] = (1, 2)
    img_size: int = 16
    in_chans: int = 3
    num_classes: int = 10
    family: ClassVar[str] = NAME

    def sample(self, rng: random.Random | None, kind: str = "random") -> ToyConfig:
        if kind in ("min", "max"):
            pick = min if kind == "min" else max
            return ToyConfig(pick(self.widths), pick(self.depths), pick(self.depths))
        return ToyConfig(rng.choice(self.widths), rng.choice(self.depths), rng.choice(self.depths))

    def validate(self, cfg: Any) -> ToyConfig:
        if cfg.width not in self.widths or {cfg.depth1, cfg.depth2} - set(self.depths):
            raise InvalidSubnetConfig(f"{cfg} is outside space {self.name!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {"family": NAME, **asdict(self)}


class ToySupernet(nn.Module):
    """Prefix-sliced: stem conv (4x4 patches), stage 1 token MLPs, 2x2 max-pool of the token grid, stage 2 token
    MLPs scaled by a learned gate, mean pool, head."""

    family = NAME

    def __init__(self, space: ToySpace):
        super().__init__()
        self.space = space
        w, d = max(space.widths), max(space.depths)
        self.stem = nn.Conv2d(space.in_chans, w, 4, 4)
        self.stage1 = nn.ModuleList(nn.Linear(w, w) for _ in range(d))
        self.stage2 = nn.ModuleList(nn.Linear(w, w) for _ in range(d))
        self.gate = nn.Parameter(torch.ones(d, w))
        self.head = nn.Linear(w, space.num_classes)

    def check_config(self, cfg: Any) -> ToyConfig:
        if getattr(cfg, "family", None) != NAME:
            raise InvalidSubnetConfig("not a toy config")
        return self.space.validate(cfg)

    def forward(self, x: Tensor, cfg: ToyConfig) -> Tensor:
        w = self.check_config(cfg).width
        x = F.conv2d(x, self.stem.weight[:w], self.stem.bias[:w], stride=4)  # (B, w, 4, 4)
        t = x.flatten(2).transpose(1, 2)
        for layer in self.stage1[:cfg.depth1]:
            t = t + F.relu(F.linear(t, layer.weight[:w, :w], layer.bias[:w]))
        g = int(t.shape[1] ** 0.5)
        t = F.max_pool2d(t.transpose(1, 2).reshape(len(t), w, g, g), 2).flatten(2).transpose(1, 2)
        for i, layer in enumerate(self.stage2[:cfg.depth2]):
            t = t + F.relu(F.linear(t, layer.weight[:w, :w], layer.bias[:w])) * self.gate[i, :w]
        return F.linear(t.mean(1), self.head.weight[:, :w], self.head.bias)

    def subnet_state(self, cfg: ToyConfig, calib: Any = None) -> SubnetState:
        w = self.check_config(cfg).width
        sd = {"stem.weight": self.stem.weight[:w], "stem.bias": self.stem.bias[:w],
              "head.weight": self.head.weight[:, :w], "head.bias": self.head.bias}
        for i in range(cfg.depth1):
            sd[f"stage1.{i}.weight"], sd[f"stage1.{i}.bias"] = self.stage1[i].weight[:w, :w], self.stage1[i].bias[:w]
        folds = []
        for i in range(cfg.depth2):
            sd[f"stage2.{i}.weight"], sd[f"stage2.{i}.bias"] = self.stage2[i].weight[:w, :w], self.stage2[i].bias[:w]
            folds.append(ScaleFold(f"stage2.{i}", self.gate[i, :w].detach().clone()))  # gate > 0 commutes with ReLU
        spec = DenseSpec(NAME, self.space.img_size, self.space.in_chans, self.space.num_classes,
                         ToyBody(w, cfg.depth1, cfg.depth2), source={"family": NAME, "config": cfg.to_dict(),
                                                                     "config_id": cfg.id})
        return SubnetState(spec, {k: v.detach().clone().contiguous() for k, v in sd.items()}, tuple(folds))

    def param_count(self, cfg: ToyConfig) -> int:
        w, n = cfg.width, self.space.num_classes
        return w * (self.space.in_chans * 16 + 1) + (cfg.depth1 + cfg.depth2) * (w * w + w) + n * w + n

    def no_weight_decay(self) -> set[str]:
        return {"gate"}

    def fixed(self, cfg: Any, calib: Any = None) -> nn.Module:
        return FixedConfig(self, cfg).eval()

    def meta(self) -> dict[str, Any]:
        return {"family": NAME, "arch": {"space": self.space.to_dict()}}


@dataclass(frozen=True)
class ToyBody:
    width: int
    depth1: int
    depth2: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToyBody:
        return cls(**d)


class ToyDense(nn.Module):
    """The dense toy: plain Conv2d / Linear / MaxPool2d, the gates already folded into stage 2."""

    body_type = ToyBody

    def __init__(self, spec: DenseSpec):
        super().__init__()
        self.spec, b = spec, spec.body
        self.stem = nn.Conv2d(spec.in_chans, b.width, 4, 4)
        self.stage1 = nn.ModuleList(nn.Linear(b.width, b.width) for _ in range(b.depth1))
        self.pool = nn.MaxPool2d(2)
        self.stage2 = nn.ModuleList(nn.Linear(b.width, b.width) for _ in range(b.depth2))
        self.head = nn.Linear(b.width, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # (B, w, 4, 4)
        t = x.flatten(2).transpose(1, 2)
        for layer in self.stage1:
            t = t + F.relu(layer(t))
        g = self.spec.img_size // 8
        t = self.pool(t.transpose(1, 2).reshape(-1, self.spec.body.width, 2 * g, 2 * g)).flatten(2).transpose(1, 2)
        for layer in self.stage2:
            t = t + F.relu(layer(t))
        return self.head(t.mean(1))

    def architecture_table(self, macs_by_module: dict[str, int]) -> Table:
        b = self.spec.body
        return Table(f"toy width {b.width}", ("stage", "layers"), [("1", b.depth1), ("2", b.depth2)])


class ToyFamily:
    name = NAME
    config_type, space_type = ToyConfig, ToySpace
    train_rule = "sandwich"
    tiny_space = default_space = "toy-tiny"

    @dataclass(frozen=True)
    class import_options:  # noqa: N801 (the protocol's attribute name)
        pass

    def config_from_dict(self, obj: Any) -> ToyConfig:
        d = {k: v for k, v in obj.items() if k != "family"}
        return ToyConfig(**d)

    def space_from_dict(self, obj: Any, name: str | None = None) -> ToySpace:
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items() if k != "family"}
        return ToySpace(**d)

    def load_official(self, path: Any, options: Any) -> tuple:
        raise InvalidSubnetConfig("the toy family has no official checkpoints")

    def build_supernet(self, space: ToySpace, seed: int | None = 0) -> ToySupernet:
        torch.manual_seed(seed or 0)
        return ToySupernet(space).eval()

    def supernet_from_meta(self, meta: dict[str, Any]) -> ToySupernet:
        return ToySupernet(self.space_from_dict(meta["arch"]["space"]))

    def cost_features(self, space: ToySpace, cfg: ToyConfig) -> dict[str, float]:
        return {"const": 1.0, "macs": float((16 * cfg.depth1 + 4 * cfg.depth2) * cfg.width ** 2)}

    def tolerances(self) -> dict:
        return {}


@pytest.fixture(scope="module")
def toy_family():
    space = ToySpace("toy-tiny")
    SPACES.register(space.name, space)
    ARCHS.register(NAME, ToyDense)
    FAMILIES.register(NAME, ToyFamily())
    yield FAMILIES.get(NAME)
    for registry in (FAMILIES, ARCHS, SPACES):
        registry.unregister(NAME if registry is not SPACES else space.name)


def cli(*args: Any) -> Any:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_toy_family_extracts_exactly_and_deploys_with_parity(toy_family, tmp_path):
    space = SPACES.get("toy-tiny")
    supernet = scaled_random_(toy_family.build_supernet(space, 0))
    with torch.no_grad():
        supernet.gate.uniform_(0.5, 1.5)  # positive, away from 1: the fold must really happen
    save_supernet(supernet, tmp_path / "sn", space)

    cli("extract", "--supernet", tmp_path / "sn", "--config", "max", "--out", tmp_path / "dense")
    dense = load_dense(tmp_path / "dense")
    cfg = space.sample(None, "max")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert (dense(x) - supernet(x, cfg)).abs().max() <= 1e-5
    assert type(dense) is ToyDense and sum(p.numel() for p in dense.parameters()) == supernet.param_count(cfg)
    assert "toy width 16" in cli("info", tmp_path / "dense").output

    pytest.importorskip("openvino")
    out = cli("run", "--dense", tmp_path / "dense", "--backend", "onnxruntime,openvino", "--batch", "1",
              "--threads", "1", "--out", tmp_path / "deploy").output
    assert "PASSED: toy subnet" in out
    report = json.loads((tmp_path / "deploy" / "report.json").read_text())
    assert report["passed"] and report["model"]["family"] == NAME and report["model"]["arch"] == NAME
    assert {(p["backend"], p["precision"]) for p in report["parity"]} == {("onnxruntime", "fp32"),
                                                                         ("openvino", "fp32")}
    assert all(p["outputs"][0]["max_abs"] <= 1e-4 for p in report["parity"])
