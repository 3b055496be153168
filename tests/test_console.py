"""Tables people read: Markdown whenever stdout is not a terminal, with every header and value whole."""
from __future__ import annotations

import io

from deploy_nas.console import Steps, Table, show


def test_markdown_keeps_long_headers_and_values():
    table = Table("search under 0.610 ms", ("method", "config", "evaluated", "val top-1", "test top-1", "latency ms",
                                           "meets budget"), caption="a caption")
    table.add_row("evolution", "a" * 40, 264, "0.9805", "0.9611", "0.345", "yes")
    out = io.StringIO()
    show(table, out)  # a StringIO is not a terminal
    text = out.getvalue()
    assert "| method | config | evaluated | val top-1 | test top-1 | latency ms | meets budget |" in text
    assert f"| evolution | {'a' * 40} | 264 | 0.9805 | 0.9611 | 0.345 | yes |" in text
    assert "…" not in text and text.startswith("**search under 0.610 ms**") and "a caption" in text


def test_pipes_in_cells_are_escaped_and_width_counts_every_column():
    table = Table("", ("a", "b"), [("x|y", "z")])
    assert table.markdown_lines()[-1] == "| x\\|y | z |"
    assert table.width() == len("x|y") + len("z") + 3 * 2 + 1


def test_steps_print_one_line_each_off_a_terminal():
    out = io.StringIO()
    with Steps(2, out) as step:
        step("export: ONNX")
        step("report")
    assert out.getvalue().splitlines() == ["[1/2] export: ONNX", "[2/2] report"]
