"""Pickled model files: each way they go wrong gets its own sentence; code inside never runs."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from ipgraph.nodes.models.pickles import PickleFileError, load_weights_only


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ipgraph-hostile-pickle-ran",))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, data, expected", [
    ("random.ckpt", os.urandom(4096), "is not a PyTorch"),
    ("html.ckpt", b"<!DOCTYPE html><html>404</html>", "is not a PyTorch"),
    ("empty.bin", b"", "is not a PyTorch"),
    ("payload.ckpt", pickle.dumps({"state_dict": {"x": _Payload()}}), "more than plain tensors"),
    ("payload_list.pt", pickle.dumps([_Payload()]), "more than plain tensors"),
])
def test_bad_pickles_get_sentences(tmp_path, name, data, expected):
    with pytest.raises(PickleFileError, match=expected) as info:
        load_weights_only(_write(tmp_path / name, data), "checkpoint")
    assert "weights_only=False" not in str(info.value) and name in str(info.value)
    assert not os.path.exists("/tmp/ipgraph-hostile-pickle-ran")


def test_truncated_archive(tmp_path):
    whole = tmp_path / "whole.ckpt"
    torch.save({"w": torch.randn(64, 64)}, whole)
    cut = _write(tmp_path / "cut.ckpt", whole.read_bytes()[:300])
    with pytest.raises(PickleFileError, match="truncated or corrupt"):
        load_weights_only(cut)
    assert torch.equal(load_weights_only(whole)["w"], torch.load(whole, weights_only=True)["w"])


def test_a_directory_or_missing_file(tmp_path):
    with pytest.raises(PickleFileError, match="could not be opened"):
        load_weights_only(tmp_path)
    with pytest.raises(PickleFileError, match="could not be opened"):
        load_weights_only(tmp_path / "missing.ckpt")
