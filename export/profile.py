"""Where an engine's time goes: per-op-type time from the runtime's own profiler, so that a bench report answers
"why is this subnet slow" (OpenVINO: its performance counters; onnxruntime: its profiling events).

Profiling runs are separate from the timed runs (a profiling-enabled compile or session is slower) and are made at
the engine's latency batch. Each row is an op type with the number of its nodes that executed, its mean time per
inference and its share of the total.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploy_nas.console import Table

PROFILE_RUNS, PROFILE_WARMUP = 20, 5
# op types that move data by index (what made AutoFormer's old relative-position lowering slow)
INDEX_OPS = ("Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterElementsUpdate", "ScatterND",
             "ScatterNDUpdate", "ScatterUpdate")


@dataclass(frozen=True)
class OpTime:
    op: str
    nodes: int
    ms: float  # mean per inference
    share: float  # of the profiled total

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples: Iterable[tuple[str, str, float]], inferences: int) -> list[OpTime]:
    """(op type, node name, ms) samples over `inferences` runs -> one row per op type, slowest first."""
    time: dict[str, float] = {}
    nodes: dict[str, set[str]] = {}
    for op, node, ms in samples:
        time[op] = time.get(op, 0.0) + ms
        nodes.setdefault(op, set()).add(node)
    total = sum(time.values()) or 1.0
    rows = [OpTime(op, len(nodes[op]), t / inferences, t / total) for op, t in time.items()]
    return sorted(rows, key=lambda r: -r.ms)


def index_share(rows: Iterable[dict[str, Any]]) -> float:
    """The share of time spent in gather/scatter-type ops."""
    return sum(r["share"] for r in rows if r["op"] in INDEX_OPS)


def onnxruntime_events(profile_json: str | Path) -> list[tuple[str, str, float]]:
    """(op type, node name, ms) of every node-kernel event of an onnxruntime profile file."""
    events = json.loads(Path(profile_json).read_text())
    return [(e["args"]["op_name"], e["name"], e["dur"] / 1000.0) for e in events
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and "op_name" in e.get("args", {})]


def profile_table(engine: str, rows: list[dict[str, Any]], top: int = 12) -> Table:
    table = Table(f"{engine}: time per op type at batch 1 (the runtime's profiler; gather/scatter "
                  f"{100 * index_share(rows):.1f}%)", ("op type", "nodes", "ms", "share"))
    for r in rows[:top]:
        table.add_row(r["op"], r["nodes"], f"{r['ms']:.3f}", f"{100 * r['share']:.1f}%")
    return table
