"""The one map from `ttt.peer_mode` to the `Ensemble` class that runs it."""

from __future__ import annotations

from pgolf.config import TTTConfig
from pgolf.ttt.causal_ensemble import CausalEnsemble
from pgolf.ttt.ensemble import Ensemble, ScoreSink
from pgolf.ttt.own_only import OwnOnly
from pgolf.ttt.pr2139_ensemble import PR2139Ensemble

PEER_MODES: dict[str, type] = {"off": OwnOnly, "causal": CausalEnsemble, "pr2139": PR2139Ensemble}


def make_ensemble(ttt: TTTConfig, sink: ScoreSink) -> Ensemble:
    """The ensemble of `ttt.peer_mode`, scoring through `sink` (the score-first loop of one `run_ttt` call)."""
    return PEER_MODES[ttt.peer_mode](ttt, sink)
