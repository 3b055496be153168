"""The jobs users run, as library functions: extract a subnet, search under a latency budget, the demo.

`cli.py` turns options into these calls and their results into tables; `deploy_nas.export.pipeline` holds the
deployment (export -> build -> parity -> bench -> report). Backends are imported inside the functions that need
them, so importing this module needs none.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from deploy_nas.errors import DataError, DeployNASError, InvalidSubnetConfig
from deploy_nas.family import SCORE_BN_IMAGES
from deploy_nas.settings import setting

Log = Callable[[str], None]


@dataclass(frozen=True)
class SupernetSource:
    """Where a supernet comes from: an official checkpoint, a supernet directory, or (neither) the embedded
    default; `import_options` ("key=value") and `aliases` (keyword import options) read an official checkpoint."""

    family: str | None = None
    checkpoint: Path | None = None
    supernet_dir: Path | None = None
    space: str | None = None  # validate configs against this space instead of the supernet's own
    import_options: tuple[str, ...] = ()
    aliases: dict[str, Any] = field(default_factory=dict)

    def load(self) -> tuple[Any, Any]:
        """(supernet, the space configs are validated against, or None)."""
        from deploy_nas.spaces import load_space
        from deploy_nas.supernets import check_space_fits, load_supernet

        if self.checkpoint is not None and self.supernet_dir is not None:
            raise InvalidSubnetConfig("give --checkpoint or --supernet, not both")
        given = {k: v for k, v in self.aliases.items() if v is not None}
        if self.checkpoint is None and (self.import_options or given):
            raise InvalidSubnetConfig("import options apply to an official checkpoint; pass --checkpoint")
        source = self.checkpoint if self.checkpoint is not None else self.supernet_dir
        supernet, own_space = load_supernet(source, self.family, option_pairs=self.import_options, **given)
        if not self.space:
            return supernet, own_space
        space = load_space(self.space, supernet.family)
        check_space_fits(supernet, space, f"--space {self.space}")
        return supernet, space


def resolve_config(config: Any, family: str, space: Any = None) -> Any:
    """A config from `min`/`max` of the space, a preset, a file or a dict, validated against `space` if given."""
    from deploy_nas.spaces import load_config

    if config in ("min", "max"):
        if space is None:
            raise InvalidSubnetConfig(f"--config {config} needs a search space; pass --space")
        cfg = space.sample(random.Random(0), config)
    else:
        cfg = load_config(config, family)
    return space.validate(cfg) if space is not None else cfg


@dataclass(frozen=True)
class Extracted:
    model: nn.Module
    config: Any
    space: Any


BN_CALIB_BATCHES = 64  # NASViT's post_bn_calibration_batch_num: the batches BatchNorm recalibration reads at most


def calibration(bn: str | None, calib_dir: Path | None, space: Any, family: str, int8: bool = False) -> Any:
    """The Calibration a BatchNorm family gets: `--bn` (default: recalibrate when `--calib-data` is given) and the
    images of `--calib-data` at the space's input size; None when neither is given (the family's own default).
    A family without BatchNorm refuses `--bn`, and `--calib-data` unless an int8 build (`int8`) calibrates on it:
    an option that would change nothing is an error, not silently dropped."""
    from deploy_nas.family import FAMILIES, Calibration

    if not getattr(FAMILIES.get(family), "batchnorm", False):
        if bn is not None or (calib_dir is not None and not int8):
            with_bn = [name for name in FAMILIES if getattr(FAMILIES.get(name), "batchnorm", False)]
            raise InvalidSubnetConfig(f"{'--bn' if bn is not None else '--calib-data'}: {family} subnets have no "
                                      f"BatchNorm to calibrate (families with it: {', '.join(with_bn)}; "
                                      "--calib-data also calibrates the int8 builds of `run`)")
        return None
    if bn is None and calib_dir is None:
        return None
    if bn == "stored" and calib_dir is not None and not int8:
        raise InvalidSubnetConfig("--calib-data with --bn stored: the stored BatchNorm statistics are folded as they "
                                  "are and no image is read; leave out one of them (--calib-data also calibrates "
                                  "the int8 builds of `run`)")
    images = None
    if calib_dir is not None:
        from deploy_nas.data import load_image_folder

        if space is None:
            raise InvalidSubnetConfig("--calib-data: the input size comes from a search space; pass --space")
        # at most the official amount (64 batches of 64), evenly spread over a larger folder (so over its classes):
        # its size cannot make the memory unbounded
        limit = BN_CALIB_BATCHES * Calibration.batch_size
        images = load_image_folder(calib_dir, space.img_size, space.in_chans, limit=limit).images
    return Calibration(bn or "recalibrate", images)


def extract_subnet(source: SupernetSource, config: Any, bn: str | None = None,
                   calib_dir: Path | None = None, int8: bool = False) -> Extracted:
    """Load the supernet, resolve and validate the config, and materialize its dense model. `int8`: an int8 build
    follows, which calibrates on `calib_dir` too."""
    from deploy_nas.family import family_of
    from deploy_nas.materialize import materialize

    supernet, space = source.load()
    cfg = supernet.check_config(resolve_config(config, supernet.family, space))
    warn = getattr(family_of(supernet), "config_warning", None)  # e.g. ViT-Slim budgets that removed nothing
    if warn is not None and (warning := warn(supernet, cfg)):
        print(warning, file=sys.stderr)
    calib = calibration(bn, calib_dir, space, supernet.family, int8)
    if calib_dir is None and bn != "stored" and (trained := embedded_calibration(supernet, space)) is not None:
        calib = trained
        print(f"note: BatchNorm statistics recalibrated on {len(calib.images)} images of the embedded task's train "
              "split, the data the supernet was trained on (--bn stored folds the stored ones, --calib-data DIR "
              "recalibrates on other images)", file=sys.stderr)
    return Extracted(materialize(supernet, cfg, calib=calib), cfg, space)


def embedded_calibration(supernet: Any, space: Any, limit: int = BN_CALIB_BATCHES * 64) -> Any:
    """For a BatchNorm family's supernet trained on the embedded task (its supernet.json says so): a recalibration
    on at most `limit` images of that task's train split, spread evenly over it (the official evaluation reads
    training batches); None for any other supernet."""
    from deploy_nas.family import Calibration, family_of
    from deploy_nas.supernets import EMBEDDED_CLASSES, trained_classes

    if not getattr(family_of(supernet), "batchnorm", False) or trained_classes(supernet) != EMBEDDED_CLASSES:
        return None
    return Calibration("recalibrate", _embedded_train(space, limit))


def _embedded_train(space: Any, limit: int) -> Any:
    """At most `limit` images of the embedded task's train split at the space's input size, spread evenly over it
    (as a folder's files are)."""
    from deploy_nas.data import embedded_splits, spread

    train = embedded_splits(space.img_size, space.in_chans)["train"].images
    return train[spread(len(train), limit)]


def model_to_deploy(source: SupernetSource, config: Any = None, dense_dir: Path | None = None,
                    bn: str | None = None, calib_dir: Path | None = None, int8: bool = False) -> nn.Module:
    """The dense model `deploy-nas run` deploys: a materialized directory (`dense_dir`), or `config` extracted from
    the supernet `source` names. `int8`: an int8 build follows (it calibrates on `calib_dir`)."""
    from deploy_nas.dense import load_dense

    if dense_dir is not None:
        flags = {"--family": source.family, "--config": config, "--checkpoint": source.checkpoint,
                 "--supernet": source.supernet_dir, "--space": source.space,
                 "--import-option": source.import_options, "--bn": bn,
                 "--calib-data (it calibrates int8 builds only)": calib_dir and not int8}
        given = [flag for flag, value in flags.items() if value]
        given += [f"--{'' if v else 'no-'}{k.replace('_', '-')}" for k, v in source.aliases.items() if v is not None]
        if given:
            raise InvalidSubnetConfig(f"--dense takes a dense model directory, already extracted and folded; do not "
                                      f"combine it with {', '.join(given)}")
        from deploy_nas.export.pipeline import dense_dir as dense_of

        with contextlib.suppress(DeployNASError):  # a deployment directory stands for its dense/, as elsewhere
            dense_dir = dense_of(dense_dir)
        return load_dense(dense_dir)
    if config is None:
        raise InvalidSubnetConfig("missing option --config (or --dense DIR)")
    return extract_subnet(source, config, bn, calib_dir, int8).model


def training_target(family: str | None, space: str | None) -> tuple[Any, Any]:
    """(family, space) to train: the given space (and its family), else the family's default space; with neither,
    the embedded default's family."""
    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import load_space
    from deploy_nas.supernets import DEFAULT_DIR, read_supernet_meta

    chosen = load_space(space, family) if space else None
    fam = FAMILIES.get(family or (chosen.family if chosen else read_supernet_meta(DEFAULT_DIR)["family"]))
    return fam, chosen or load_space(fam.default_space)


# ---------------------------------------------------------------------------------------------------- search


def train_data(space: Any, data_dir: Path | None, classes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """train/val(/test) splits: the embedded task (cluttered digits), or the image folders DIR/train, DIR/val and
    DIR/test when there is one, labelled by `classes` when given (a supernet's, from `trained_classes`), else by
    DIR/train's class folders."""
    from deploy_nas.data import embedded_splits, image_folder_splits

    if data_dir is None:
        _embedded_for(classes)
        return embedded_splits(space.img_size, space.in_chans)
    # One class list for every split (so a class has one label), at most the model's num_classes.
    names = ("train", "val", "test") if (Path(data_dir) / "test").is_dir() else ("train", "val")
    return image_folder_splits(data_dir, names, space.img_size, space.in_chans, space.num_classes, classes)


def search_data(space: Any, data_dir: Path | None, classes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """val/test splits: the embedded task (cluttered digits; val with `SEARCH_VAL_RENDERS` renderings of its
    digits), or DIR/val and DIR/test image folders labelled by `classes` when given (the supernet's), else by
    DIR/train's class folders when there is one (the labels training on DIR used), else DIR/val's."""
    from deploy_nas.data import image_folder_splits, search_splits

    if data_dir is None:
        _embedded_for(classes)
        return search_splits(space.img_size, space.in_chans)
    return image_folder_splits(data_dir, ("val", "test"), space.img_size, space.in_chans, space.num_classes, classes)


def _embedded_for(classes: tuple[str, ...] | None) -> None:
    """A supernet trained on image folders is not scored or trained further on the embedded task: its labels would
    mean other classes there."""
    from deploy_nas.data import class_names
    from deploy_nas.errors import DataError
    from deploy_nas.supernets import EMBEDDED_CLASSES

    if classes is not None and tuple(classes) != EMBEDDED_CLASSES:
        raise DataError(f"the supernet was trained on image folders ({len(classes)} classes: {class_names(classes)}),"
                        f" not on the embedded task; pass --data DIR with image folders of those classes")


@dataclass(frozen=True)
class SearchRequest:
    """What `deploy-nas search` asks for (each field is one of its options); `None` means the default."""

    budget_ms: float = setting(help="latency budget, batch 1, measured on --backend", flag="--latency-budget-ms")
    backend: str = setting("openvino", "where latency is measured")
    precision: str = setting("fp32")
    threads: int | None = setting(None, "CPU threads (default: the cores this process may use)")
    data_dir: Path | None = setting(None, "image folders DIR/val and DIR/test (default: the embedded task)",
                                 flag="--data")
    generations: int = setting(20)
    population: int = setting(50)
    measure: int = setting(32, "subnets measured to fit the latency predictor")
    params_range: tuple[int, int] | None = setting(None, "LOW,HIGH parameter count")
    flops_range: tuple[float, float] | None = setting(None, "LOW,HIGH GMAC")
    seed: int = setting(0)
    calib_images: int | None = setting(None, "BatchNorm families: the training images each subnet's statistics are "
                                             f"recalibrated on before it is scored (default {SCORE_BN_IMAGES}; the "
                                             f"official evaluation: {BN_CALIB_BATCHES * 64})")
    bn: str | None = None  # --bn and --calib-data: the options of extract and run (the CLI adds them)
    calib_dir: Path | None = None

    def check(self) -> SearchRequest:
        bounds = (("generations", 1, 10_000), ("population", 4, 10_000), ("measure", 8, 10_000),
                  ("threads", 1, 4096), ("seed", 0, 2**63 - 1), ("calib_images", 2, BN_CALIB_BATCHES * 64))
        bad = [f"{n}={getattr(self, n)} (allowed {low}..{high})" for n, low, high in bounds
               if getattr(self, n) is not None and not low <= getattr(self, n) <= high]
        if bad:
            raise DeployNASError(f"search settings out of range: {', '.join(bad)}")
        if not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise DeployNASError(f"--latency-budget-ms must be a finite number > 0, got {self.budget_ms!r}")
        for name, rng in (("--params-range", self.params_range), ("--flops-range", self.flops_range)):
            if rng is not None and not (all(math.isfinite(v) for v in rng) and 0 <= rng[0] <= rng[1]):
                raise DeployNASError(f"{name} needs 0 <= LOW <= HIGH (finite), got {rng!r}")
        return self


def run_search(supernet: Any, space: Any, out: Path, request: SearchRequest, resume: bool = False,
               known: dict[str, float] | None = None, log: Log = lambda m: None) -> dict[str, Any]:
    """Evolution and random search under a latency budget measured on `request.backend`; see deploy_nas.search."""
    from deploy_nas.distributed import main_process
    from deploy_nas.export.latency import BackendLatency
    from deploy_nas.search import EvolutionConfig, Search, SearchConstraints, SearchSetup, check_resume
    from deploy_nas.supernets import trained_classes

    request.check()
    if space is None:
        raise DeployNASError("this supernet has no search space; pass --space")
    latency = BackendLatency(request.backend, request.precision, request.threads)
    checked = check_resume(Path(out), resume, space, supernet.family, latency)  # named before the data is read
    data = search_data(space, request.data_dir, trained_classes(supernet))
    calib, bn = search_calibration(request, space, supernet.family)
    if bn is not None and bn["mode"] == "recalibrate" and main_process():  # rank 0 alone speaks, as Search does
        log(f"BatchNorm: each subnet's statistics are recalibrated on {bn['images']} images of {bn['source']} before "
            "it is scored (--bn stored scores with the checkpoint's)")
    evo = EvolutionConfig.for_population(request.population, request.generations, request.seed)
    constraints = SearchConstraints(request.budget_ms, request.params_range, request.flops_range)
    search = Search(supernet, space, data, latency, constraints, SearchSetup(measure=request.measure, evolution=evo),
                    log=log, calib=calib, bn=bn)
    return search.run(out, resume=resume, known=known, checked=checked)


def search_calibration(request: SearchRequest, space: Any, family: str) -> tuple[Any, dict[str, Any] | None]:
    """How a search scores a BatchNorm family's subnets, and what search.json records of it: their statistics
    recalibrated on training images, as the official evaluation does (the stored ones are a mixture over every
    subnet trained): those of --calib-data, else of the task's train split (the embedded task's, or DIR/train);
    `--bn stored`: the stored ones. (None, None) for the other families, which refuse these options."""
    import numpy as np

    from deploy_nas.data import load_image_folder
    from deploy_nas.family import FAMILIES, Calibration

    if not getattr(FAMILIES.get(family), "batchnorm", False):
        calibration(request.bn, request.calib_dir, space, family)  # --bn / --calib-data: refused, naming why
        if request.calib_images is not None:
            raise InvalidSubnetConfig(f"--calib-images: {family} subnets have no BatchNorm to recalibrate")
        return None, None
    if request.bn == "stored":
        if request.calib_dir is not None or request.calib_images is not None:
            raise InvalidSubnetConfig("--bn stored scores with the stored statistics and reads no calibration images; "
                                      "drop --calib-data / --calib-images")
        return Calibration("stored"), {"mode": "stored"}
    n = request.calib_images or SCORE_BN_IMAGES
    if request.calib_dir is not None:
        folder, source = Path(request.calib_dir), "--calib-data"
    elif request.data_dir is not None:
        folder, source = Path(request.data_dir) / "train", "DIR/train"
        if not folder.is_dir():
            raise DataError(f"{family} subnets are scored with their BatchNorm statistics recalibrated on training "
                            f"images (the stored ones are a mixture over every subnet trained), and {folder} does not"
                            " exist: pass --calib-data DIR, or --bn stored to score with the stored ones")
    else:  # the embedded task: its train split
        picked = _embedded_train(space, n)
        return Calibration("recalibrate", picked), {"mode": "recalibrate", "images": len(picked),
                                                    "source": "the embedded task's train split"}
    images = load_image_folder(folder, space.img_size, space.in_chans, limit=n).images
    if len(images) < 2:  # refused before any work: one image has no batch statistics
        raise DataError(f"{folder} holds {len(images)} image(s); recalibrating BatchNorm needs 2 or more (the "
                        f"search reads up to --calib-images, default {SCORE_BN_IMAGES})")
    from deploy_nas.distributed import main_process

    if request.calib_images is not None and len(images) < request.calib_images and main_process():  # rank 0 speaks
        print(f"note: --calib-images {request.calib_images}: {folder} holds {len(images)} images; each subnet's "
              f"BatchNorm statistics are recalibrated on those {len(images)}", file=sys.stderr)
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    return Calibration("recalibrate", images), {"mode": "recalibrate", "images": len(images), "source": source,
                                                "sha256": digest}


# ------------------------------------------------------------------------------------------------------ demo

DEMO_BUDGET_FRACTION = 0.35  # the budget sits this far up the measured min..max latency range: it binds
# Latency is measured on one core: the edge setting, and on a shared 2-core machine the steadiest timing (a second
# thread's start-up and any neighbour's load show up as noise of the same size as a small subnet's run time).
DEMO_THREADS = 1
# The demo's search: AutoFormer's evolution at a size that fits the demo's time (random search gets as many
# evaluations); the predictor is fitted on more subnets than `search`'s default, held-out quarter included.
DEMO_SEARCH = {"population": 16, "generations": 6, "measure": 40}
# int8 is left to `deploy-nas run --precision int8`: on these 0.1M-parameter winners its worst sample can fall just
# below the int8 gate (cosine 0.898 < 0.9 measured once), and the demo must not depend on that.
DEMO_TARGETS = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "fp16"))


def demo_budget(supernet: Any, space: Any, threads: int | None = DEMO_THREADS) -> dict[str, Any]:
    """The demo's budget: the min and max subnets measured on OpenVINO fp32 batch 1, and a budget
    DEMO_BUDGET_FRACTION of the way between them (a budget that binds: most of the space is over it)."""
    from deploy_nas.export.latency import BackendLatency
    from deploy_nas.materialize import materialize

    ends = {k: space.sample(None, k) for k in ("min", "max")}
    latency = BackendLatency("openvino", "fp32", threads)
    fast, slow = (latency(materialize(supernet, ends[k])) for k in ("min", "max"))
    return {"budget_ms": round(fast + DEMO_BUDGET_FRACTION * (slow - fast), 4), "range_ms": (fast, slow),
            "ends": ends, "known": {ends["min"].id: fast, ends["max"].id: slow}}


def demo_search_request(budget_ms: float, generations: int | None = None, seed: int = 0) -> SearchRequest:
    settings = {**DEMO_SEARCH, **({"generations": generations} if generations else {})}
    return SearchRequest(budget_ms, threads=DEMO_THREADS, seed=seed, **settings)


DEMO_ENTRIES = {"report.json", "search", "deploy"}  # what the demo writes into its directory


def _demo_files(out: Path) -> list[str]:
    """The files (and links) under the demo directory `out`, as paths relative to it, without deploy-nas's markers
    and locks: what its report.json lists as written by the demo."""
    import os

    from deploy_nas.io import LOCK_SUFFIX, MARKER

    found = []
    for root, dirs, files in os.walk(out):
        here = Path(root)
        links = [d for d in dirs if (here / d).is_symlink()]
        dirs[:] = sorted(d for d in dirs if d not in links)
        found += [(here / name).relative_to(out).as_posix() for name in files + links
                  if name != MARKER and not name.endswith(LOCK_SUFFIX)]
    return sorted(found)


def check_demo_output(out: Path, force: bool = False) -> None:
    """The demo replaces its own earlier output without being asked (`make demo` runs it again), anything else
    only with --force: a directory is the demo's when it holds no more than DEMO_ENTRIES, its report.json is a demo
    report, and every file in it is one the report lists (an output another command wrote inside it, say
    `export --out DEMO/deploy/int8`, is not the demo's to replace). (Files deploy-nas did not write are refused even
    with --force, when the directory is replaced.)"""
    import json

    from deploy_nas.errors import OutputPathError, brief
    from deploy_nas.io import LOCK_SUFFIX, MARKER

    if force or not out.is_dir():
        return
    entries = {p.name for p in out.iterdir() if not p.name.endswith(LOCK_SUFFIX)} - {MARKER}
    if not entries:
        return
    try:
        report = json.loads((out / "report.json").read_text())
        ours = entries <= DEMO_ENTRIES and isinstance(report, dict) and {"supernet", "search"} <= set(report)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise OutputPathError(f"output directory {out} is not empty and holds no earlier demo output; choose another "
                              "path, or pass --force to replace it")
    listed = report.get("files")
    if not isinstance(listed, list):
        raise OutputPathError(f"{out} holds the output of an older demo, which does not list the files it wrote; "
                              "pass --force to replace it (with whatever else is in it), or choose another path")
    others = sorted(set(_demo_files(out)) - set(listed))
    if others:
        raise OutputPathError(f"{out} holds an earlier demo's output and files the demo did not write "
                              f"({', '.join(brief(f, 60) for f in others[:3])}{', ...' if len(others) > 3 else ''}): "
                              "another command's output? Move them out, or pass --force to replace them too")


def demo(out: Path, generations: int | None = None, log: Log = lambda m: None,
         progress: Callable[[str], None] = lambda step: None, force: bool = False) -> dict[str, Any]:
    """The main job on the embedded trained supernet: measure its min and max subnets on OpenVINO fp32, search
    under a budget between them (evolution and random side by side), deploy the evolution winner to onnxruntime
    and OpenVINO (fp32, fp16), and write OUT/report.json. Returns {"summary", "search", "deploy_dir"}. OUT is
    built beside the old one and replaces it when everything is written (`check_demo_output`: which OUT it
    replaces without `force`)."""

    from deploy_nas.data import embedded_splits
    from deploy_nas.evaluate import top1
    from deploy_nas.io import atomic_dir, check_output_dir
    from deploy_nas.supernets import default_supernet

    check_demo_output(out, force)
    check_output_dir(out, force=True)  # before the minutes of work: what deploy-nas did not write is never replaced
    supernet, space = default_supernet()
    test = embedded_splits(space.img_size, space.in_chans)["test"]
    plan = demo_budget(supernet, space)
    budget, (fast, slow) = plan["budget_ms"], plan["range_ms"]
    accuracy = {f"{k}_test_top1": top1(supernet.fixed(c), test) for k, c in plan["ends"].items()}
    log(f"embedded supernet: max subnet {accuracy['max_test_top1']:.4f}, min subnet {accuracy['min_test_top1']:.4f} "
        f"test top-1; OpenVINO fp32 latency ({DEMO_THREADS} thread) {fast:.3f} to {slow:.3f} ms -> budget "
        f"{budget} ms")
    with atomic_dir(out, force=True) as tmp:
        summary, result = _demo_into(tmp, out, supernet, space, plan, accuracy, generations, log, progress)
    return {"summary": summary, "search": result, "deploy_dir": out / "deploy"}


def _demo_into(out: Path, final: Path, supernet: Any, space: Any, plan: dict[str, Any], accuracy: dict[str, float],
               generations: int | None, log: Log, progress: Callable[[str], None]) -> tuple[dict, dict]:
    """The demo's search, deployment and report, written into `out` (a fresh directory renamed to `final`)."""
    import json

    from deploy_nas.export.pipeline import RunPlan, run
    from deploy_nas.io import write_json_atomic
    from deploy_nas.materialize import materialize

    budget, (fast, slow) = plan["budget_ms"], plan["range_ms"]
    # the budget was chosen from these two measurements: the search must judge feasibility by the same numbers
    request = demo_search_request(budget, generations)
    result = run_search(supernet, space, out / "search", request, known=plan["known"], log=log)
    winner = resolve_config(result["evolution"]["winner"]["config"], supernet.family, space)
    run(materialize(supernet, winner), out / "deploy", RunPlan(targets=DEMO_TARGETS), progress, force=True,
        report_as=final / "deploy")
    deployed = json.loads((out / "deploy" / "report.json").read_text())
    keys = ("config", "val_top1", "test_top1", "latency_ms", "meets_budget")
    summary = {
        "supernet": accuracy,
        "search": {"budget_ms": budget, "latency_range_ms": [fast, slow], "threads": DEMO_THREADS,
                   "population": request.population, "generations": request.generations,
                   "latency": result["latency"],
                   "predictor": result["predictor"]["held_out"],
                   "timing_repeatability": result["predictor"]["repeatability"],
                   **{m: {**{k: result[m]["winner"][k] for k in keys}, "evaluated": result[m]["evaluated"]}
                      for m in ("evolution", "random")}},
        "parity": {f"{p['backend']}/{p['precision']}": {"pass": p["passed"], "max_abs": max(
            o["max_abs"] for o in p["outputs"])} for p in deployed["parity"]},
        "bench": json.loads((out / "deploy" / "bench.json").read_text()),
    }
    summary["files"] = sorted({*_demo_files(out), "report.json"})  # what a later demo may replace without --force
    write_json_atomic(out / "report.json", summary)
    return summary, result


__all__ = ["Extracted", "SearchRequest", "SupernetSource", "check_demo_output", "demo", "demo_budget",
           "demo_search_request", "extract_subnet", "model_to_deploy", "resolve_config", "run_search", "search_data",
           "training_target"]

