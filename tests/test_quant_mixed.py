"""quantize_state_dict / dequantize_state_dict on a tiny GPT: coverage, categories, error bounds, layout."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pgolf.checkpoint import rebank_state_dict, unbank_state_dict
from pgolf.errors import ArtifactError, DataError
from pgolf.model import GPT
from pgolf.quant.calibrate import collect_hessians
from pgolf.quant.mixed import dequantize_state_dict, quantize_state_dict, summary_by_category, summary_lines


@pytest.fixture(scope="module")
def tiny_setup():
    """A tiny GPT with every weight perturbed off its init (zero-init projections included) plus its calibration."""
    from pgolf.config import load_preset

    torch.manual_seed(0)
    cfg = load_preset("tiny")
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg.model.vocab_size, (2, 32), generator=g) for _ in range(2)]
    hessians, act_rms = collect_hessians(model, batches)
    sd = unbank_state_dict(model.state_dict(), cfg.model)
    qstate = quantize_state_dict(sd, hessians, act_rms, cfg.quant)
    return cfg, model, sd, hessians, act_rms, qstate


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def test_roundtrip_covers_every_tensor_with_bounded_error(tiny_setup):
    cfg, _, sd, _, _, qstate = tiny_setup
    out = dequantize_state_dict(qstate)
    assert list(out) == list(sd)
    entries = qstate["meta"]["entries"]
    for name, t in sd.items():
        assert out[name].shape == t.shape and out[name].dtype == t.dtype, name
        kind = entries[name]["kind"]
        err = rel_err(out[name], t)
        bound = {"passthrough": 1e-3, "gate_int8": 1e-2}.get(kind, 0.15 if "tok_emb" in name else 0.25)
        assert err < bound, (name, kind, err)
        if kind == "gptq":
            assert err > 1e-3, name  # really quantized


def test_categories_follow_the_record(tiny_setup):
    cfg, _, sd, _, _, qstate = tiny_setup
    q = cfg.quant
    entries = qstate["meta"]["entries"]
    assert entries["tok_emb.weight"]["category"].startswith("gptq (int7)")
    assert entries["tok_emb.weight"]["clip_sigmas"] == q.embed_clip_sigmas
    for i in range(cfg.model.num_layers):
        for m in ("c_q", "c_k", "c_v", "proj"):
            e = entries[f"blocks.{i}.attn.{m}.weight"]
            assert e["category"].startswith("gptq (int6)") and e["clip_sigmas"] == q.attn_clip_sigmas
        for m in ("fc", "proj"):
            e = entries[f"blocks.{i}.mlp.{m}.weight"]
            assert e["category"].startswith("gptq (int6)") and e["clip_sigmas"] == q.mlp_clip_sigmas
        assert entries[f"blocks.{i}.attn.attn_gate_w"]["category"] == "gate int8/row"
    for name, t in sd.items():
        if t.numel() <= q.passthrough_max_numel and not name.endswith("attn_gate_w"):
            assert entries[name]["category"] == "passthrough (float16)", name
            assert qstate["tensors"][name].dtype == torch.float16
    lqer = [n for n, e in entries.items() if e["category"].endswith("+lqer_asym")]
    assert len(lqer) == q.lqer_top_k
    awq = [n for n, e in entries.items() if "+awqgrpint8" in e["category"]]
    assert sum(len(entries[n]["awq"]["starts"]) for n in awq) == q.awq_top_k == 1
    by_cat = summary_by_category(qstate)
    assert sorted(n for names in by_cat.values() for n in names) == sorted(sd)
    lines = summary_lines(qstate)
    assert lines[0] == "Quantized weights:"
    assert "  gate int8/row: blocks.attn.attn_gate_w" in lines


def test_qstate_layout(tiny_setup):
    _, _, sd, _, _, qstate = tiny_setup
    tensors, meta = qstate["tensors"], qstate["meta"]
    assert all(t.device.type == "cpu" for t in tensors.values())
    for name, e in meta["entries"].items():
        if e["kind"] == "gptq":
            q, s = tensors[name + ".q"], tensors[name + ".scale"]
            assert q.dtype == torch.int8 and q.shape == sd[name].shape
            assert s.dtype == torch.float16 and s.shape == (sd[name].shape[0],)
            R = 2 ** (e["bits"] - 1) - 1
            if e["awq"] is None:
                assert int(q.abs().max()) <= R
            if e["lqer"] is not None:
                assert tensors[name + ".lqA_a"].shape == (sd[name].shape[0], e["lqer"]["rank"])
                assert tensors[name + ".lqB_a"].shape == (e["lqer"]["rank"], sd[name].shape[1])
                assert int(tensors[name + ".lqA_a"].min()) >= -2 and int(tensors[name + ".lqA_a"].max()) <= 1
                assert int(tensors[name + ".lqB_a"].min()) >= -8 and int(tensors[name + ".lqB_a"].max()) <= 7
        elif e["kind"] == "gate_int8":
            assert tensors[name + ".gq"].dtype == torch.int8 and tensors[name + ".gs"].dtype == torch.float16
    # the meta survives JSON (the artifact stores it that way) and decodes identically
    meta2 = json.loads(json.dumps(meta))
    a = dequantize_state_dict(qstate)
    b = dequantize_state_dict({"tensors": tensors, "meta": meta2})
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert meta2["qconfig"]["lqer_rank"] == 4


def test_rebanked_model_predicts_like_the_original(tiny_setup):
    cfg, model, _, _, _, qstate = tiny_setup
    model.eval()
    q_model = GPT(cfg.model)
    q_model.load_state_dict(rebank_state_dict(dequantize_state_dict(qstate), cfg.model), strict=True)
    q_model.eval()
    ids = torch.randint(0, cfg.model.vocab_size, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = float(model(ids[:, :-1], ids[:, 1:]))
        q_loss = float(q_model(ids[:, :-1], ids[:, 1:]))
        logits, q_logits = model(ids), q_model(ids)
    assert abs(q_loss - loss) < 0.02
    assert rel_err(q_logits, logits) < 0.15
    model.train()


def test_lqer_and_awq_lower_the_error(tiny_setup):
    cfg, _, sd, hessians, act_rms, qstate = tiny_setup
    plain_cfg = dataclasses.replace(cfg.quant, lqer_enabled=False, awq_enabled=False)
    plain = quantize_state_dict(sd, hessians, act_rms, plain_cfg)
    assert not any("+" in e["category"] for e in plain["meta"]["entries"].values())
    assert not any(k.endswith((".lqA_a", ".awqg_s_hi")) for k in plain["tensors"])
    full, base = dequantize_state_dict(qstate), dequantize_state_dict(plain)
    for name, e in qstate["meta"]["entries"].items():
        if e["kind"] == "gptq" and e["lqer"] is not None:
            assert rel_err(full[name], sd[name]) < rel_err(base[name], sd[name]), name
    # the LQER pick is the top-k by realized error of the (AWQ-free here) GPTQ weights
    errs = {n: float((base[n] - sd[n]).norm()) for n, e in plain["meta"]["entries"].items() if e["kind"] == "gptq"}
    top = sorted(errs, key=lambda n: -errs[n])[: cfg.quant.lqer_top_k]
    lq_cfg = dataclasses.replace(cfg.quant, awq_enabled=False)
    lq = quantize_state_dict(sd, hessians, act_rms, lq_cfg)
    assert sorted(n for n, e in lq["meta"]["entries"].items() if e["lqer"]) == sorted(top)


def test_awq_picks_the_planted_salient_group(tiny_setup):
    cfg, _, sd, hessians, act_rms, _ = tiny_setup
    planted = dict(act_rms)
    name = "blocks.2.mlp.proj.weight"
    planted[name] = act_rms[name].clone()
    planted[name][32:48] *= 1000.0
    qstate = quantize_state_dict(sd, hessians, planted, dataclasses.replace(cfg.quant, lqer_enabled=False))
    e = qstate["meta"]["entries"][name]
    assert e["category"] == "gptq (int6)+awqgrpint8"
    assert e["awq"] == {"starts": [32], "group_size": 16, "bits": 8}
    assert qstate["tensors"][name + ".awqg_s_hi"].shape == (sd[name].shape[0],)
    # only one group in the whole model is protected, and without act stats nothing is
    assert sum(1 for x in qstate["meta"]["entries"].values() if x["awq"]) == 1
    none = quantize_state_dict(sd, hessians, None, dataclasses.replace(cfg.quant, lqer_enabled=False))
    assert not any(x["awq"] for x in none["meta"]["entries"].values())


def test_gate_without_int8_is_passthrough_and_bf16_is_restored(tiny_setup):
    cfg, _, sd, hessians, act_rms, _ = tiny_setup
    sd2 = dict(sd)
    sd2["skip_weights"] = sd["skip_weights"].to(torch.bfloat16)
    qcfg = dataclasses.replace(cfg.quant, gate_int8=False, lqer_enabled=False, awq_enabled=False)
    qstate = quantize_state_dict(sd2, hessians, act_rms, qcfg)
    assert qstate["meta"]["entries"]["blocks.0.attn.attn_gate_w"]["category"] == "passthrough (float16)"
    out = dequantize_state_dict(qstate)
    assert out["skip_weights"].dtype == torch.bfloat16
    assert torch.equal(out["skip_weights"], sd2["skip_weights"])


def test_c_k_and_c_v_fall_back_to_the_shared_c_q_statistics(tiny_setup):
    cfg, _, sd, hessians, act_rms, qstate = tiny_setup
    only_q = {k: v for k, v in hessians.items() if not k.endswith(("c_k.weight", "c_v.weight"))}
    rms_q = {k: v for k, v in act_rms.items() if not k.endswith(("c_k.weight", "c_v.weight"))}
    again = quantize_state_dict(sd, only_q, rms_q, cfg.quant)
    assert again["meta"] == qstate["meta"]
    assert all(torch.equal(again["tensors"][k], v) for k, v in qstate["tensors"].items())


def test_deterministic(tiny_setup):
    cfg, _, sd, hessians, act_rms, qstate = tiny_setup
    again = quantize_state_dict(sd, hessians, act_rms, cfg.quant)
    assert again["meta"] == qstate["meta"]
    assert all(torch.equal(again["tensors"][k], v) for k, v in qstate["tensors"].items())


def test_bad_inputs_are_refused(tiny_setup):
    cfg, _, sd, hessians, act_rms, qstate = tiny_setup
    missing = {k: v for k, v in hessians.items() if k != "blocks.1.mlp.fc.weight"}
    with pytest.raises(DataError, match="blocks.1.mlp.fc.weight"):
        quantize_state_dict(sd, missing, act_rms, cfg.quant)
    wrong = dict(hessians)
    wrong["tok_emb.weight"] = torch.eye(3)
    with pytest.raises(DataError, match=r"tok_emb.weight must be \[64, 64\]"):
        quantize_state_dict(sd, wrong, act_rms, cfg.quant)
    with pytest.raises(DataError, match="blocks.0.attn.c_q.weight has non-finite"):
        quantize_state_dict(sd, {**hessians, "blocks.0.attn.c_q.weight": torch.full((64, 64), float("nan"))},
                            act_rms, cfg.quant)
    with pytest.raises(DataError, match="tensor tok_emb.weight has non-finite"):
        quantize_state_dict({**sd, "tok_emb.weight": sd["tok_emb.weight"] * float("inf")}, hessians, act_rms,
                            cfg.quant)
    broken = {"tensors": {k: v for k, v in qstate["tensors"].items() if k != "tok_emb.weight.scale"},
              "meta": qstate["meta"]}
    with pytest.raises(ArtifactError, match="tok_emb.weight.scale is missing"):
        dequantize_state_dict(broken)
    with pytest.raises(ArtifactError, match="format"):
        dequantize_state_dict({"tensors": qstate["tensors"], "meta": {**qstate["meta"], "version": 99}})


@pytest.mark.gpu
def test_quantize_on_cuda_matches_cpu(tiny_setup):
    cfg, _, sd, hessians, act_rms, qstate = tiny_setup
    on_gpu = quantize_state_dict({k: v.cuda() for k, v in sd.items()}, hessians, act_rms, cfg.quant)
    assert on_gpu["meta"]["entries"] == qstate["meta"]["entries"]
    a, b = dequantize_state_dict(on_gpu), dequantize_state_dict(qstate)
    for name in sd:
        assert rel_err(a[name], b[name]) < 0.05, name


def test_non_float_and_non_matrix_tensors_pass_through():
    from pgolf.config import QuantConfig

    qcfg = QuantConfig(passthrough_max_numel=16, gptq_block_size=8, lqer_group=8, awq_group_size=8)
    W = torch.randn(8, 32)
    X = torch.randn(256, 32)
    sd = {"steps": torch.tensor([3, 4], dtype=torch.int64), "big_vector": torch.randn(100),
          "blocks.0.mlp.fc.weight": W}
    logged: list[str] = []
    qstate = quantize_state_dict(sd, {"blocks.0.mlp.fc.weight": X.T @ X}, {}, qcfg, log=logged.append)
    entries = qstate["meta"]["entries"]
    assert entries["steps"]["category"] == "passthrough (int64)"
    assert entries["big_vector"]["category"] == "passthrough (float16)"
    assert entries["blocks.0.mlp.fc.weight"]["category"] == "gptq (int6)+lqer_asym"  # no act stats: no AWQ
    assert logged == ["quant: blocks.0.mlp.fc.weight gptq (int6) (8, 32)"]
    out = dequantize_state_dict(qstate)
    assert torch.equal(out["steps"], sd["steps"]) and out["steps"].dtype == torch.int64
    assert out["big_vector"].dtype == torch.float32 and rel_err(out["big_vector"], sd["big_vector"]) < 1e-3
