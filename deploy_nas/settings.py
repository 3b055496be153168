"""Dataclass fields that are also command-line options: a default, a help text, and (optionally) the flag's name.
`deploy_nas.cli_options.dataclass_options` turns such a dataclass into click options, so a setting and its option
cannot drift apart."""
from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def setting(default: Any = MISSING, help: str = "", **meta: Any) -> Any:
    """A dataclass field with `help` (and e.g. `flag="--data"`) in its metadata; no default makes it required."""
    return field(default=default, metadata={"help": help, **meta})
