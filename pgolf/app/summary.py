"""The table a run ends with: every stage's score, the bytes against the cap, the seconds."""

from __future__ import annotations

from pgolf.rundir import Report


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def summary_table(rep: Report) -> str:
    rows = [
        ("pre-quant (EMA) val_bpb", _fmt(rep.val_bpb_prequant, ".5f")),
        ("quantized roundtrip val_bpb", _fmt(rep.val_bpb_roundtrip, ".5f")),
        ("TTT (own-only) val_bpb", _fmt(rep.val_bpb_ttt, ".5f")),
        (f"TTT + ensemble ({rep.peer_mode or '-'}) val_bpb", _fmt(rep.val_bpb_ttt_ensemble, ".5f")),
        ("route fraction", _fmt(rep.route_fraction, ".3f")),
        ("coverage tokens", f"{_fmt(rep.coverage_tokens, 'd')}/{_fmt(rep.target_tokens, 'd')}"),
        ("TTT schedule (ranks)", f"{rep.ttt_schedule or '-'} ({_fmt(rep.ttt_virtual_ranks, 'd')})"),
        ("artifact bytes (code + model)", _fmt(rep.artifact_bytes, ",d")),
        ("  code bytes", _fmt(rep.code_bytes, ",d")),
        ("  model bytes", _fmt(rep.model_bytes, ",d")),
        ("model params", _fmt(rep.model_params, ",d")),
        ("train steps", _fmt(rep.steps, ",d")),
    ]
    for name, secs in (rep.pipeline_phase_seconds or {}).items():
        rows.append((f"seconds: {name}", _fmt(secs, ".1f")))
    headline = rep.headline()
    if headline is not None:
        rows.append(("score (" + headline[0] + ")", _fmt(headline[1], ".5f")))
    width = max(len(r[0]) for r in rows)
    line = "-" * (width + 16)
    out = [line, "pgolf run summary", line]
    out += [f"{k:<{width}}  {v:>12}" for k, v in rows]
    if rep.peer_compliant is False:
        out.append("NOTE: the peer ensemble ran in a NON-COMPLIANT mode (C1, C4); it is not the score.")
    out.append(line)
    return "\n".join(out)
