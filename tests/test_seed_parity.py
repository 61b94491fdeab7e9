"""pgolf against numbers produced by the seed's own code (PR #2139's train_gpt.py) on CPU.

The fixtures in tests/fixtures/seed/ were written by `tools/seed_fixtures.py`,
which imports the seed's script unmodified through a CPU harness and runs it on
the tiny configuration (every feature on). The inputs (weights, Hessians,
documents, batches) are rebuilt here by the same functions of that script, and
each fixture stores a digest of them: `_same_inputs` fails first, with its own
message, when an RNG stream or pgolf's init changed under the fixtures.

Tolerances are stated per check. "exact" means bit for bit: one CPU thread,
fp32, the pinned torch build.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "seed"


def _load_tool():
    spec = importlib.util.spec_from_file_location("seed_fixtures", ROOT / "tools" / "seed_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sf = _load_tool()


def _fixture(name: str):
    path = FIXTURES / name
    if name.endswith(".json"):
        return json.loads(path.read_text())
    return np.load(path)


def _same_inputs(fx: dict, digest: str) -> None:
    assert fx["inputs_sha256"] == digest, (
        "the inputs rebuilt by tools/seed_fixtures.py no longer hash as when the fixture was written "
        "(RNG stream or pgolf init changed): regenerate the fixtures with the seed's script")


def _mismatches(got: dict[str, torch.Tensor], want: dict[str, dict]) -> list[str]:
    out = []
    for name, w in want.items():
        s = sf.summary(got[name])
        if s["sha256"] != w["sha256"]:
            out.append(f"{name}: sum {s['sum']!r} vs seed {w['sum']!r}, head {s['head']} vs {w['head']}")
    return out


# ----------------------------------------------------------------------------- (a) init
def test_init_weights_of_seed_42_are_the_seeds():
    """Exact: every unbanked tensor of GPT(tiny) under torch.manual_seed(42) equals the seed's GPT(h).

    The seed draws Q/K/V of all layers, then the MLP-up of all layers; drawing them
    layer by layer gives 12 of these 51 tensors different values.
    """
    from pgolf.checkpoint import unbank_state_dict
    from pgolf.model import GPT

    fx = _fixture("init_seed42.json")
    cfg = sf.pg_config().model
    torch.manual_seed(fx["seed"])
    sd = unbank_state_dict(GPT(cfg).state_dict(), cfg)
    assert set(sd) == set(fx["tensors"])
    bad = _mismatches(sd, fx["tensors"])
    assert not bad, f"{len(bad)}/{len(sd)} tensors differ:\n" + "\n".join(bad)
