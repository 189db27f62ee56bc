"""The config tree: both shipped configs validate; bad keys and values are refused with the field named."""

from __future__ import annotations

import pytest

from schemas import DEFAULT_CONFIG, FULL_CONFIG, ConfigError, OpenMindConfig, apply_overrides, load_config


def test_shipped_configs_validate():
    tiny = load_config()
    full = load_config(FULL_CONFIG)
    assert tiny.data.synthetic.num_captions == 1000 and tiny.data.synthetic.num_vqa == 500
    assert full.model.vision.grid == 27 and full.model.vision.embed_dim == 1152
    assert full.model.stage == "align" and full.model.lm.hidden_size == 4096
    assert DEFAULT_CONFIG.exists()


def test_unknown_key_names_the_field():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.lrr=0.1"])
    msg = str(e.value)
    assert "train.lrr" in msg and "unknown key" in msg and "\n" not in msg


def test_bad_value_names_the_field_and_value():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.lr=-1"])
    assert "train.lr" in str(e.value) and "-1" in str(e.value)
    with pytest.raises(ConfigError, match="model.stage"):
        load_config(overrides=["model.stage=everything"])
    with pytest.raises(ConfigError, match="embed_dim"):
        load_config(overrides=["model.vision.embed_dim=63"])


def test_source_requires_its_fields():
    with pytest.raises(ConfigError, match="data.jsonl.captions"):
        load_config(overrides=["data.source=jsonl"])


def test_overrides_parse_yaml_values():
    d = apply_overrides({}, ["a.b=3", "a.c=true", "a.d=[1, 2]", "a.e=hello world", "f=null"])
    assert d == {"a": {"b": 3, "c": True, "d": [1, 2], "e": "hello world"}, "f": None}
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_overrides_index_a_list_section():
    """data.hf may be a list (several hub data sets): an override indexes an entry, and a key that
    does not index says how to."""
    d = {"data": {"hf": [{"name": "a", "split": "train"}, {"name": "b"}]}}
    apply_overrides(d, ["data.hf.1.split=train[:500]", "data.hf.0.name=./mirror/a"])
    assert d["data"]["hf"] == [{"name": "./mirror/a", "split": "train"}, {"name": "b", "split": "train[:500]"}]
    with pytest.raises(ConfigError, match=r"data.hf is a list of 2 entries; index one \(data.hf.0.name=...\) "
                                          r"or set the whole list \(--set 'data.hf=\[...\]'\)"):
        apply_overrides(d, ["data.hf.name=x"])
    with pytest.raises(ConfigError, match=r"data.hf is a list of 2 entries; index one \(data.hf.0.name=...\)"):
        apply_overrides(d, ["data.hf.2.name=x"])
    with pytest.raises(ConfigError, match=r"data.hf.1.name is not a section"):
        apply_overrides(d, ["data.hf.1.name.x=1"])
    cfg = load_config(overrides=["data.source=hf", "data.hf=[{name: org/a, kind: caption}, {name: org/b, kind: vqa}]",
                                 "data.hf.1.split=validation[:10]"])
    assert [(h.name, h.split) for h in cfg.data.hf][1] == ("org/b", "validation[:10]")


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_fingerprint_and_yaml_round_trip(tmp_path):
    cfg = load_config()
    assert cfg.fingerprint("model") == load_config().fingerprint("model")
    assert cfg.fingerprint("model") != load_config(overrides=["model.lm.num_layers=3"]).fingerprint("model")
    assert cfg.fingerprint("model") == load_config(overrides=["train.lr=0.5"]).fingerprint("model")
    p = tmp_path / "resolved.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg
    assert isinstance(cfg, OpenMindConfig)


def test_input_paths_name_local_inputs_only(tmp_path):
    cfg = load_config(overrides=["data.source=jsonl", "data.jsonl.captions=a.jsonl"])
    assert cfg.data.input_paths() == [("data.jsonl.captions", "a.jsonl")]
    assert load_config(overrides=["data.source=hf", "data.hf.name=org/dataset"]).data.input_paths() == []
    local = load_config(overrides=["data.source=hf", f"data.hf.name={tmp_path}"]).data.input_paths()
    assert local == [("data.hf.name", str(tmp_path))]
    assert load_config().data.input_paths() == []
