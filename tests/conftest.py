"""Shared fixtures: one CPU thread, tiny configs, and one prepared data dir per session.

`tiny_data` prepares the embedded corpus once per test session (SentencePiece
vocab 512, CaseOps on, 60 validation documents) so every test that needs real
shards reads the same directory.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("PGOLF_QUIET", "1")
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine (the CPU reference path is tested instead)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_cfg():
    from pgolf.config import load_preset

    return load_preset("tiny")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared data directory: embedded corpus, vocab 512, CaseOps, 60 val docs."""
    from pgolf.prepare import prepare_data

    out = tmp_path_factory.mktemp("data") / "embedded512"
    prepare_data(source="embedded", out_dir=out, vocab_size=512, val_docs=60, caseops=True,
                 shard_tokens=200_000, overwrite=False, progress=False)
    return out


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
