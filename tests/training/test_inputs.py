"""Issue 18, bad input of a run (helper D2's slice): every case is one ``error:`` line and exit status 2, no
traceback; guarded resumes. In-process ``main([...])`` where the behaviour is not the process's own."""
import pytest
import torch

from anodev2.training.run_files import atomic_save, checksum_path, load_checkpoint


def test_an_uppercase_hex_sidecar_is_the_same_checksum(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.arange(8.0)}, path)
    side = checksum_path(path)
    digest, name = side.read_text().split()
    side.write_text(f"{digest.upper()}  {name}\n")
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(8.0))
