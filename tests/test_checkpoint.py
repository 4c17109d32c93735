import subprocess

import pytest
import torch

from segtricks.engine import checkpoint
from segtricks.files import NoSpaceError


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1, "w": torch.ones(3)}, path)

    def crash_midway(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = checkpoint.load(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path):
    """Issue 11: a full disk was `RuntimeError: [enforce fail at inline_container.cc:672]`. Here on a
    real 1 MiB tmpfs where the environment lets us mount one (an injected ENOSPC is tested in test_ablate)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        path = disk / "last.pt"
        checkpoint.save_atomic({"epoch": 1, "w": torch.ones(150_000)}, path)  # 600 kB: room for one copy only
        with pytest.raises(NoSpaceError, match=rf"no space left writing {path} \(the previous last.pt "
                                                 rf"is intact\); free space and rerun, the training resumes"):
            checkpoint.save_atomic({"epoch": 2, "w": torch.zeros(150_000)}, path)
        state = checkpoint.load(path)
        assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(150_000))
        assert [p.name for p in disk.iterdir()] == ["last.pt"]
    finally:
        subprocess.run(["umount", "-l", str(disk)])
