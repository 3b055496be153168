"""A sixth hostile try of the CLI (2026-12-07, fifth session). Each test failed on the code before its fix."""
from __future__ import annotations

from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line

SMALL_SEARCH = ("--latency-budget-ms", "5", "--generations", "1", "--population", "4", "--measure", "8")


def test_a_space_larger_than_the_supernet_is_refused_before_the_search(tmp_path):
    """`search --space autoformer-t` on the embedded default (depth 4-6) read the data and built the latency
    backend for a minute, then failed at its first sample with 'depth = 12 does not fit' and no word of the space."""
    line = one_error_line(run("search", "--space", "autoformer-t", *SMALL_SEARCH, "--out", tmp_path / "s"))
    assert "--space autoformer-t (autoformer-T) does not fit the autoformer supernet" in line and "depth = 12" in line
    assert not (tmp_path / "s").exists()
