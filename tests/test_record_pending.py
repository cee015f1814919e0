"""`bench record-pending FOLDER` given what it cannot read back: one line, exit 2, nothing
recorded and the folder kept. (Recording a kept cell for real: tests/test_tracking.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.live import bench


@pytest.mark.parametrize(
    "text", ['{"uri": "sqlite:///x.db", "run_id"', "[]", "{}"], ids=["cut-short", "a-list", "empty"]
)
def test_a_broken_pending_file_is_one_line_exit_2(tmp_path: Path, text: str) -> None:
    cell = tmp_path / "unrecorded" / "0123abcd"
    cell.mkdir(parents=True)
    (cell / "pending.json").write_text(text)
    done = bench("record-pending", str(tmp_path / "unrecorded"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{cell / 'pending.json'} cannot be read back" in done.stderr
    assert (cell / "pending.json").read_text() == text
