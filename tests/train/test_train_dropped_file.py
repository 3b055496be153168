"""A file the user drops into a training run's --out while it runs makes the next epoch's save refuse to replace the
directory (the file would be lost). The run ended with "refusing to replace OUT: it holds files deploy-nas did not
write", and nothing said that OUT still held the last epoch's state, to be continued with --resume once the file is
moved: now the message says so, and that resume works."""
from __future__ import annotations

import json

import pytest

from deploy_nas.errors import OutputPathError
from deploy_nas.family import FAMILIES
from deploy_nas.spaces import load_space
from deploy_nas.train import STATE_FILE, TrainConfig, train_supernet
from tests.train.test_train_max_steps_resume import _split

RECIPE = dict(epochs=2, batch_size=8, num_random=1, warmup_epochs=0.5)


def test_a_file_dropped_into_the_output_mid_run_ends_it_saying_to_resume(tmp_path):
    fam, space = FAMILIES.get("autoformer"), load_space("autoformer-tiny")
    data = _split(space.img_size, space.in_chans)
    out = tmp_path / "sn"

    def drop_after_the_first_epoch(row: dict) -> None:
        if row.get("epoch") == 2:  # logged before its save, after the first epoch's
            (out / "notes.txt").write_text("mine")

    with pytest.raises(OutputPathError) as err:
        train_supernet(fam, space, out, TrainConfig(**RECIPE), False, {"train": data, "val": data},
                       log=drop_after_the_first_epoch)
    message = str(err.value)
    assert "notes.txt" in message and "continue with --resume" in message, message
    assert (out / "notes.txt").read_text() == "mine" and (out / STATE_FILE).is_file()
    assert json.loads((out / "supernet.json").read_text())["epoch"] == 1  # the first epoch's save, kept

    (out / "notes.txt").unlink()
    rows: list[dict] = []
    train_supernet(fam, space, out, TrainConfig(**RECIPE), True, {"train": data, "val": data}, log=rows.append)
    assert rows[0]["resumed_from"] == str(out) and rows[0]["epoch"] == 1
    assert json.loads((out / "supernet.json").read_text())["epoch"] == 2
