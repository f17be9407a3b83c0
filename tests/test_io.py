import json

import pandas as pd

from refusal_lab.core.io import write_csv, write_json


def test_atomic_writers_create_folders_and_leave_no_temporary(tmp_path):
    target = tmp_path / "a" / "b" / "summary.json"
    write_json(target, {"x": 1, "path": tmp_path})
    assert json.loads(target.read_text()) == {"x": 1, "path": str(tmp_path)}
    write_json(target, {"x": 2})  # replaces
    assert json.loads(target.read_text()) == {"x": 2}
    frame = pd.DataFrame({"layer": [1, 2], "bypass": [0.5, -1.0]})
    write_csv(frame, tmp_path / "c" / "table.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "c" / "table.csv"), frame)
    assert not list(tmp_path.rglob("*.tmp"))


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    import pytest

    from refusal_lab.core.io import atomic_path, write_jsonl

    target = tmp_path / "rows.jsonl"
    write_jsonl(target, [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])
    assert [json.loads(line)["prompt"] for line in target.read_text().splitlines()] == ["a", "c"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text().count("\n") == 2 and not list(tmp_path.glob("*.tmp"))
