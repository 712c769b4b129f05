"""``nnunet_ddpm.files``: a file or folder replaces its target only once it is complete."""
import pytest
import torch

from nnunet_ddpm.files import folder_written_atomically, torch_saved_atomically, written_atomically


def test_written_atomically_replaces_the_file_only_on_success(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with written_atomically(str(target)) as temporary:
        open(temporary, "w").write("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with written_atomically(str(target)) as temporary:
            open(temporary, "w").write("half")
            raise RuntimeError
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_failed_torch_save_leaves_the_earlier_checkpoint(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    torch_saved_atomically({"epoch": 3, "weights": torch.ones(2)}, str(target))
    with pytest.raises(Exception):  # a lambda cannot be pickled: torch.save fails after writing part of the file
        torch_saved_atomically({"epoch": 4, "weights": torch.zeros(2), "hook": lambda: None}, str(target))
    saved = torch.load(target)
    assert saved["epoch"] == 3 and torch.equal(saved["weights"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pth"]


def test_folder_written_atomically_replaces_the_folder_only_on_success(tmp_path):
    target = tmp_path / "out" / "maps"
    (tmp_path / "out" / "maps.partial").mkdir(parents=True)  # left by an interrupted run: cleared first
    (tmp_path / "out" / "maps.partial" / "stale").write_text("")
    with folder_written_atomically(str(target)) as partial:
        assert not list((tmp_path / "out" / "maps.partial").iterdir())
        (tmp_path / "out" / "maps.partial" / "a").write_text("first")
        assert partial == str(target) + ".partial" and not target.exists()
    assert [p.name for p in target.iterdir()] == ["a"]
    with folder_written_atomically(str(target) + "/") as partial:  # what was there before goes
        open(f"{partial}/b", "w").write("second")
    assert [p.name for p in target.iterdir()] == ["b"]
    with pytest.raises(KeyboardInterrupt):
        with folder_written_atomically(str(target)) as partial:
            open(f"{partial}/c", "w").write("half")
            raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["b"] and [p.name for p in (tmp_path / "out").iterdir()] == ["maps"]
