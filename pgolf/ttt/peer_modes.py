"""The one map from `ttt.peer_mode` to the `Ensemble` class that runs it.

Each mode's module is imported when a run first asks for it, so that a packed record carries
the one mode its config runs and not the others (the packer reads `PEER_MODES` to bundle it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: a run without peers never loads the ensemble module
    from pgolf.config import TTTConfig
    from pgolf.ttt.ensemble import Ensemble, ScoreSink

PEER_MODES: dict[str, str] = {"off": "pgolf.ttt.own_only:OwnOnly", "causal": "pgolf.ttt.causal_ensemble:CausalEnsemble",
                              "pr2139": "pgolf.ttt.pr2139_ensemble:PR2139Ensemble"}
"""mode -> "module:class"."""


def ensemble_class(mode: str) -> type:
    module, cls = PEER_MODES[mode].split(":")
    return getattr(importlib.import_module(module), cls)


def make_ensemble(ttt: TTTConfig, sink: ScoreSink) -> Ensemble:
    """The ensemble of `ttt.peer_mode`, scoring through `sink` (the score-first loop of one `run_ttt` call)."""
    return ensemble_class(ttt.peer_mode)(ttt, sink)
