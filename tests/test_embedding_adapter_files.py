"""LoRA on a token embedding in PEFT adapter files (issue 14 follow-up): ``save_adapter`` writes a
``LoRAEmbedding`` as PEFT's ``base_model.model.<path>.lora_embedding_A`` (r, V) and
``.lora_embedding_B`` (C, r), ``load_adapter`` reads it back with the linear layers' checks, the
base fingerprint sees through the wrapper, and ``model.merge()`` / ``unmerge()`` take both kinds
of layer, all or none. The crosscheck tests move one adapter between minilora and real PEFT."""

import json

import numpy as np
import pytest

from minilora import GPT, Llama, LlamaConfig, add_lora_embedding, rel_error
from minilora import safetensors as st
from minilora.adapters import (CONFIG_NAME, WEIGHTS_NAME, AdapterError, adapters_disabled, base_fingerprint,
                               combine_adapters, load_adapter, save_adapter, set_active)
from minilora.nn.lora_embedding import LoRAEmbedding

V, C, R_EMB, R_LIN = 11, 16, 3, 2  # the tiny GPT's vocabulary (ours) and width
IDS = np.array([[1, 4, 4, 7, 10], [4, 0, 1, 8, 2]])  # repeated ids: 4 three times


def _base(dtype="float32"):
    return GPT("tiny", vocab_size=V, seed=0, dtype=dtype)


def _model(dtype="float32", seed=1):
    """The tiny GPT with LoRA on q, v and wte, every adapter array off its init (B ≠ 0, A ≠ 0)."""
    model = _base(dtype).add_lora(["q", "v"], r=R_LIN, alpha=2 * R_LIN)
    add_lora_embedding(model, "wte", r=R_EMB, alpha=2 * R_EMB)
    g = np.random.default_rng(seed)
    for p in model.named_parameters(trainable=True).values():
        p[...] = 0.3 * g.standard_normal(p.shape)
    return model


def _state(model) -> dict:
    return {k: np.array(v) for k, v in model.named_parameters().items()}


def _unchanged(model, before) -> bool:
    after = model.named_parameters()
    return set(after) == set(before) and all(np.array_equal(before[k], after[k]) for k in before)


def _read(directory):
    with open(directory / WEIGHTS_NAME, "rb") as fh:
        tensors, meta = st.deserialize(fh.read(), "w")
    with open(directory / CONFIG_NAME) as fh:
        return tensors, meta, json.load(fh)


def _write(directory, tensors, meta, cfg):
    """A (hand-edited) adapter directory; drops the config hash so edits are judged on their own."""
    meta = {k: v for k, v in meta.items() if k != "minilora.config_sha256"}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / WEIGHTS_NAME).write_bytes(st.serialize(tensors, meta))
    (directory / CONFIG_NAME).write_text(json.dumps(cfg))
    return directory


# ----------------------------------------------------------------------------- save and load


def test_saved_with_peft_s_keys_shapes_and_targets(tmp_path):
    model = _model()
    save_adapter(model, tmp_path)
    tensors, _, cfg = _read(tmp_path)
    ad = model.wte.adapters["default"]
    A, B = tensors["base_model.model.wte.lora_embedding_A"], tensors["base_model.model.wte.lora_embedding_B"]
    assert A.shape == (R_EMB, V) and B.shape == (C, R_EMB)  # PEFT: (r, V) and (C, r), no transpose
    np.testing.assert_array_equal(A, ad.params["A"])
    np.testing.assert_array_equal(B, ad.params["B"])
    assert not any("wte.lora_A" in k or "wte.lora_embedding_A.weight" in k for k in tensors)
    assert len(tensors) == 2 + 2 * 2 * 2  # wte, and q, v in 2 blocks
    assert cfg["target_modules"] == ["q", "v", "wte"]
    assert cfg["rank_pattern"] == {"wte": R_EMB} and cfg["alpha_pattern"] == {"wte": 2 * R_EMB}


def test_round_trip_gives_the_same_logits_and_activates_the_embedding(tmp_path):
    model = _model()
    want = model.forward(IDS)
    save_adapter(model, tmp_path)
    fresh = _base()
    assert rel_error(fresh.forward(IDS), want) > 1e-2  # the adapter matters
    info = load_adapter(fresh, tmp_path)
    assert info["fingerprint"] == "exact" and "wte" in info["layers"] and len(info["layers"]) == 5
    assert isinstance(fresh.wte, LoRAEmbedding) and fresh.wte.active == "default"
    np.testing.assert_array_equal(fresh.forward(IDS), want)  # the same arrays, the same arithmetic
    assert not fresh.named_parameters(trainable=True)  # trainable=False by default, embedding included


def test_an_embedding_only_adapter_saves_and_loads(tmp_path):
    model = add_lora_embedding(_base(), "wte", r=R_EMB, alpha=R_EMB)
    model.wte.adapters["default"].params["A"][...] = np.random.default_rng(0).standard_normal((R_EMB, V))
    want = model.forward(IDS)
    save_adapter(model, tmp_path)
    _, _, cfg = _read(tmp_path)
    assert cfg["target_modules"] == ["wte"] and cfg["r"] == R_EMB
    fresh = _base()
    load_adapter(fresh, tmp_path, adapter_name="emb", trainable=True)
    np.testing.assert_array_equal(fresh.forward(IDS), want)
    assert set(fresh.named_parameters(trainable=True)) == {"wte.lora.emb.A", "wte.lora.emb.B"}


def _edited(tmp_path, edit):
    """Save _model()'s adapter, apply ``edit(tensors, cfg)`` and write the result to ``bad/``."""
    save_adapter(_model(), tmp_path / "good")
    tensors, meta, cfg = _read(tmp_path / "good")
    edit(tensors, cfg)
    return _write(tmp_path / "bad", tensors, meta, cfg)


EA, EB = "base_model.model.wte.lora_embedding_A", "base_model.model.wte.lora_embedding_B"


def _set(key, value):
    def edit(tensors, cfg):
        tensors[key] = value
    return edit


def _pop(key):
    return lambda tensors, cfg: tensors.pop(key)


def _rename(old, new):
    return lambda tensors, cfg: tensors.__setitem__(new, tensors.pop(old))


@pytest.mark.parametrize("edit, match", [
    (_set(EA, np.zeros((R_EMB, V + 1), "float32")), r"lora_embedding_A'.*wrong shape \(3, 12\), expected \(r, V\) = \(r, 11\)"),
    (_set(EB, np.zeros((C + 1, R_EMB), "float32")), r"lora_embedding_B'.*expected \(C, r\) = \(16, r\)"),
    (_set(EB, np.zeros((C, R_EMB + 1), "float32")), r"rank 4 differs"),
    (_set(EA, np.full((R_EMB, V), np.nan, "float32")), r"lora_embedding_A'.*NaN or Inf"),
    (_set(EB, np.zeros((C, R_EMB), "float64")), r"lora_embedding_B'.*wrong dtype F64"),
    (_pop(EB), r"missing key base_model\.model\.wte\.lora_embedding_B \(layer 'wte' is targeted"),
    (_rename(EA, "base_model.model.lm_head.lora_embedding_A"), r"an embedding's key, but the model has no "
                                                               r"token embedding 'lm_head' \(it is a linear layer"),
    (_rename(EA, "base_model.model.wte.lora_A.weight"), r"no linear layer 'wte' \('wte' is a token embedding"),
    (lambda t, cfg: cfg.update(target_modules=["q", "v"]), r"layer 'wte' is not in target_modules"),
    (lambda t, cfg: cfg.update(rank_pattern={}), r"rank 3 but .* says r = 2 for layer 'wte'"),
])
def test_a_bad_embedding_entry_is_refused_and_the_model_left_unchanged(tmp_path, edit, match):
    directory = _edited(tmp_path, edit)
    model = _base()
    before = _state(model)
    with pytest.raises(AdapterError, match=match):
        load_adapter(model, directory)
    assert _unchanged(model, before) and type(model.wte).__name__ == "Embedding"  # not even wrapped
    assert not model.lora_layers()


def test_a_file_for_a_tied_embedding_is_refused(tmp_path):
    """The Llama's head reads embed_tokens: add_lora_embedding refuses it, and so does the loader."""
    cfg_l = LlamaConfig(vocab_size=V, n_ctx=8, n_layer=1, n_embd=8, n_head=2, n_kv_head=1, hidden=16)
    llama = Llama(cfg_l)
    tensors = {"base_model.model.model.embed_tokens.lora_embedding_A": np.zeros((2, V), "float32"),
               "base_model.model.model.embed_tokens.lora_embedding_B": np.zeros((8, 2), "float32")}
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["embed_tokens"]}
    directory = _write(tmp_path, tensors, {"format": "pt"}, cfg)
    before = _state(llama)
    with pytest.raises(AdapterError, match="embed_tokens' is tied to the LM head"):
        load_adapter(llama, directory)
    assert _unchanged(llama, before)


def test_dora_with_an_embedding_is_refused_both_ways(tmp_path):
    model = _base().add_lora(["q", "v"], r=R_LIN, alpha=2 * R_LIN, use_dora=True)
    add_lora_embedding(model, "wte", r=R_EMB, alpha=R_EMB)
    with pytest.raises(AdapterError, match="wte: adapter 'default' is DoRA on its linear layers"):
        save_adapter(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    directory = _edited(tmp_path, lambda t, cfg: cfg.update(use_dora=True))
    fresh = _base()
    with pytest.raises(AdapterError, match="'use_dora': layer 'wte' is a token embedding"):
        load_adapter(fresh, directory)
    assert not fresh.lora_layers()


def test_an_existing_adapter_name_on_the_embedding_is_refused(tmp_path):
    model = _model()
    save_adapter(model, tmp_path)
    target = add_lora_embedding(_base(), "wte", r=2, alpha=2)  # "default" only on wte
    before = _state(target)
    with pytest.raises(AdapterError, match="wte: adapter 'default' already exists"):
        load_adapter(target, tmp_path)
    assert _unchanged(target, before) and not target.lora_layers()


# ----------------------------------------------------------------------------- switching, fingerprint


def test_set_active_and_adapters_disabled_switch_the_embedding_too():
    model = _model()
    base = _base().forward(IDS)
    with adapters_disabled(model):
        assert model.wte.active is None
        np.testing.assert_array_equal(model.forward(IDS), base)
    assert model.wte.active == "default"
    set_active(model, None)
    np.testing.assert_array_equal(model.forward(IDS), base)


def test_the_fingerprint_is_the_base_s_with_or_without_the_embedding_adapter():
    model = _model()
    assert base_fingerprint(model) == base_fingerprint(_base())  # the wrapper and A, B left out
    model.merge()
    assert model.wte.merged == "default"
    assert base_fingerprint(model) != base_fingerprint(_base())  # E − ΔE: equal only to rounding


def test_loading_onto_a_model_with_its_embedding_merged_matches_by_rounding(tmp_path):
    model = _model()
    save_adapter(model, tmp_path)
    model.merge()
    info = load_adapter(model, tmp_path, adapter_name="again", activate=False)
    assert info["fingerprint"] in ("exact", "rounding")


def test_combine_refuses_an_adapter_that_is_also_on_the_embedding():
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match="wte: adapter 'default' is also on this token embedding"):
        combine_adapters(model, ["default"], "sum")
    assert _unchanged(model, before)


# ----------------------------------------------------------------------------- merge, all or none


def test_model_merge_and_unmerge_take_the_embedding_too():
    model = _model(dtype="float64")
    E0 = np.array(model.wte.base.params["W"])
    unmerged = model.forward(IDS)
    model.merge()
    assert model.wte.merged == "default" and all(m.merged == "default" for m in model.lora_layers().values())
    np.testing.assert_allclose(model.forward(IDS), unmerged, rtol=1e-10, atol=1e-12)
    model.unmerge()
    assert model.wte.merged is None and all(m.merged is None for m in model.lora_layers().values())
    np.testing.assert_allclose(model.wte.base.params["W"], E0, rtol=1e-12, atol=1e-14)
    model.merge("default")  # by name: the same layers
    assert model.wte.merged == "default"


@pytest.mark.parametrize("poisoned", ["wte", "blocks.1.attn.v"])
def test_a_non_finite_merge_on_either_kind_leaves_every_layer_unmerged(poisoned):
    model = _model()
    ad = model.get_module(poisoned).adapters["default"]
    ad.params["B"][0, 0] = np.inf
    before = _state(model)
    with pytest.raises(FloatingPointError, match=f"{poisoned}: merging adapter 'default'"):
        model.merge()
    assert _unchanged(model, before)
    assert model.wte.merged is None and all(m.merged is None for m in model.lora_layers().values())


def test_merge_of_an_unknown_name_lists_the_adapters():
    model = add_lora_embedding(_base(), "wte", r=2, alpha=2, adapter="emb")
    with pytest.raises(KeyError, match=r"no adapter 'nope'; adapters: \['emb'\]"):
        model.merge("nope")
    model.wte.adapters["emb"].params["A"][...] = 1.0
    model.merge("emb")  # an adapter on the embedding alone merges through the model's door
    assert model.wte.merged == "emb"


# ----------------------------------------------------------------------------- real PEFT


@pytest.mark.crosscheck
def test_the_tiny_gpt_head_is_not_tied():
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from minilora import torch_twin as tt

    model = _model()
    assert model.lm_head.params["W"] is not model.wte.base.params["W"]
    twin = tt.torch_twin(model, "float32")
    assert twin.lm_head.weight.data_ptr() != twin.wte.weight.data_ptr()
    assert isinstance(twin.wte, torch.nn.Embedding)


@pytest.mark.crosscheck
def test_minilora_file_loads_in_peft_with_the_same_logits(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from minilora import torch_twin as tt

    model = _model()
    want = model.forward(IDS)
    save_adapter(model, tmp_path)
    pm = peft.PeftModel.from_pretrained(tt.torch_twin(_base(), "float32"), tmp_path)
    assert type(pm.base_model.model.wte).__name__ == "Embedding" and hasattr(pm.base_model.model.wte, "lora_embedding_A")
    np.testing.assert_array_equal(pm.base_model.model.wte.lora_embedding_A["default"].detach().numpy(),
                                  model.wte.adapters["default"].params["A"])
    with torch.no_grad():
        theirs = pm(torch.from_numpy(IDS)).numpy()
    err = rel_error(want, theirs)
    assert err <= 1e-5, err  # float32 on both sides: measured ~1e-7
    with pm.disable_adapter(), torch.no_grad():  # and the adapter is what makes the difference
        assert rel_error(pm(torch.from_numpy(IDS)).numpy(), want) > 1e-2


@pytest.mark.crosscheck
def test_peft_file_loads_in_minilora_with_the_same_logits(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from minilora import torch_twin as tt

    base = _base()
    config = peft.LoraConfig(r=R_LIN, lora_alpha=2 * R_LIN, target_modules=["q", "v", "wte"],
                             rank_pattern={"wte": R_EMB}, alpha_pattern={"wte": 2 * R_EMB}, lora_dropout=0.0)
    pm = peft.get_peft_model(tt.torch_twin(base, "float32"), config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        theirs = pm(torch.from_numpy(IDS)).numpy()
    pm.save_pretrained(tmp_path)
    with open(tmp_path / WEIGHTS_NAME, "rb") as fh:
        tensors, _ = st.deserialize(fh.read(), "w")
    assert tensors[EA].shape == (R_EMB, V) and tensors[EB].shape == (C, R_EMB)  # what PEFT 0.21 writes
    info = load_adapter(base, tmp_path)
    assert info["fingerprint"] == "absent" and "wte" in info["layers"]
    err = rel_error(base.forward(IDS), theirs)
    assert err <= 1e-5, err
    np.testing.assert_array_equal(base.wte.adapters["default"].params["B"],
                                  pm.base_model.model.wte.lora_embedding_B["default"].detach().numpy())


@pytest.mark.crosscheck
def test_peft_twin_builds_the_embedding_adapter():
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from minilora import torch_twin as tt

    model = _model(dtype="float64")
    pm, adapter = tt.peft_twin(model)
    assert adapter == "default" and "wte" in pm.peft_config["default"].target_modules
    assert tt.torch_name("wte.lora.default.A", peft=True, embeddings={"wte"}) == \
        "base_model.model.wte.lora_embedding_A.default"
    with torch.no_grad():
        err = rel_error(model.forward(IDS), pm(torch.from_numpy(IDS)).numpy())
    assert err <= 1e-12, err
