"""What a command costs before it does its work. Loading an S3 checkpoint built its supernet on the meta device and
moved it with `to_empty`, and the dense model's window constants were computed there: the meta device's Python
kernels imported torch's compiler stack (torch._dynamo, sympy), about two seconds of every S3 command on this
machine. No family's `extract` imports it now."""
from __future__ import annotations

import subprocess
import sys

import torch

from tests.fuzz.strategies import FAMILY_STRATEGIES

CHECK = """
import sys
from deploy_nas.cli import main
from deploy_nas.cli_options import main_one_line
for args in sys.argv[1:]:
    try:
        main_one_line(main, args=args.split("|"), prog_name="deploy-nas")
    except SystemExit as done:
        assert done.code in (0, None), (args, done.code)
print(sorted(m for m in ("torch._dynamo", "sympy", "torch.fx.experimental.symbolic_shapes") if m in sys.modules))
"""


def test_extract_from_each_familys_checkpoint_imports_no_compiler_stack(tmp_path):
    commands = []
    for family, strategies in sorted(FAMILY_STRATEGIES.items()):
        path = tmp_path / f"{family}.pth"
        torch.save({"model": strategies.checkpoint_base()}, path)
        commands.append(f"extract|--checkpoint|{path}|--config|max|--out|{tmp_path / family}")
    # one fresh interpreter for all of them: what one imports stays imported for the next
    r = subprocess.run([sys.executable, "-c", CHECK, *commands], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout[-2000:]
    assert all((tmp_path / family / "weights.safetensors").is_file() for family in FAMILY_STRATEGIES)
