"""Typed run configuration: shipped configs, overrides, validation naming the key, resolved dump."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trainer.config import RunConfig, load_config
from configs.schema import ConfigError, apply_overrides

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml"))
DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _leaves(data: dict, prefix: str = ""):
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            yield from _leaves(value, name)
        else:
            yield name, value


def _at(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path, tmp_path):
    """Each shipped file loads, validates, and means what it says: every value written in it (and in
    its ``base:`` chain) is the resolved config's value, none dropped or misplaced; stages set
    ``max_steps``; the resolved dump (every default spelled out) loads back equal."""
    from configs.schema import read_yaml_chain
    from modeling.config import without_path_checks
    from trainer.config import _merge_base

    with without_path_checks():  # real-scale configs name placeholder model directories
        cfg = load_config(path)
        assert isinstance(cfg, RunConfig)
        written = read_yaml_chain(path.resolve(), merge=_merge_base)
        resolved = cfg.to_dict()
        for key, value in _leaves(written):
            got = _at(resolved, key)
            if key == "train.max_steps" and cfg.train.stages:
                assert got == sum(s.steps for s in cfg.train.stages), key  # the stages decide
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                assert len(got) == len(value) and all(g.items() >= v.items() for g, v in zip(got, value)), key
            else:
                assert got == value, (key, value, got)
        assert sum(s.steps for s in cfg.train.resolved_stages()) == cfg.train.max_steps >= 1
        cfg.dump(tmp_path / "resolved.yaml")
        assert load_config(tmp_path / "resolved.yaml") == cfg


def test_overrides_are_typed_and_nested():
    cfg = load_config(DEMO, ["train.lr=1e-4", "train.zero_stage=3", "train.lora.target_modules=[q_proj]",
                                   "model.vision.hf_config.hidden_size=64", "logging.wandb.mode=disabled"])
    assert cfg.train.lr == 1e-4 and cfg.train.zero_stage == 3
    assert cfg.train.lora.target_modules == ["q_proj"]
    assert cfg.model.vision.hf_config["hidden_size"] == 64
    assert cfg.logging.wandb.mode == "disabled"


@pytest.mark.parametrize("override,key,why", [
    ("train.zero_stage=5", "train.zero_stage", "must be 0, 1, 2 or 3"),
    ("train.lr=fast", "train.lr", "expected a number"),
    ("train.tuning=half", "train.tuning", "must be one of"),
    ("data.bogus=1", "data.bogus", "unknown key"),
    ("train.offload_params=true", "train.offload_params", "zero_stage 3"),
    ("model.vision.path=/no/such/dir", "model.vision.path", "no such model directory"),
    ("data.max_skip_fraction=1.5", "data.max_skip_fraction", "within [0, 1)"),
    ("train.lr.value=3", "train.lr", "is a value"),
    ("logging.every_steps=0", "logging.every_steps", "must be >= 1"),
    ("model.options.bogus=1", "model.options.bogus", "unknown key"),
    ("model.family=nope", "model.family", "unknown model family"),
    ("train.stages=[{name: a, steps: 0}]", "train.stages[0].steps", "must be >= 1"),
    ("train.stages=[{name: a}, {name: a}]", "train.stages", "unique"),
])
def test_bad_values_name_the_key(override, key, why):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert err.value.key == key and why in str(err.value)


def test_base_chain_and_resolved_dump(tmp_path):
    demo = DEMO.parent / "demo.yaml"
    (tmp_path / "a.yaml").write_text(f"base: {demo}\nname: a\ntrain: {{lr: 0.5, max_steps: 7}}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\ntrain: {max_steps: 9}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.name, cfg.train.lr, cfg.train.max_steps) == ("b", 0.5, 9)
    cfg.dump(tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["train"]["zero_stage"] == 2  # defaults spelled out
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "c.yaml")


def test_override_syntax_errors():
    with pytest.raises(ConfigError):
        apply_overrides({}, ["no_equals_sign"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_family_options_are_typed_and_stages_set_max_steps():
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "radixpert_demo.yaml",
                      ["train.stages=[{name: proj, tuning: projector, steps: 3}, {name: lora, tuning: lora, steps: 5}]"])
    assert cfg.train.max_steps == 8 and [s.tuning for s in cfg.train.resolved_stages()] == ["projector", "lora"]
    assert cfg.train.stage_at(2) == 0 and cfg.train.stage_at(3) == 1 and cfg.train.stage_bounds(1) == (3, 8)
    with pytest.raises(ConfigError, match="model.options.mask_embed_dim"):
        load_config(Path(__file__).resolve().parent.parent / "configs" / "radixpert_demo.yaml",
                    ["model.options.mask_embed_dim=wide"])


@pytest.mark.parametrize("config, override, key", [
    ("lvmed_r2_demo.yaml", "eval.family_options.reflect=true", r"eval\.family_options\.reflect'.*unknown key"),
    ("lvmed_r2_demo.yaml", "eval.family_options.chain=false", r"eval\.family_options\.reflections'.*needs chain"),
    ("llava_ta_demo.yaml", "eval.family_options.threshold=1.5", r"eval\.family_options\.threshold'.*within \(0, 1\)"),
    ("llava_ta_demo.yaml", "eval.family_options.selections=[all, best]", r"eval\.family_options\.selections'.*best"),
    ("demo.yaml", "eval.family_options.selection=all", r"eval\.family_options\.selection'.*unknown key"),
])
def test_eval_family_options_are_typed_per_family_and_refused_at_load(config, override, key):
    """Each family's EvalOptions dataclass checks eval.family_options when the config loads, before any worker."""
    with pytest.raises(ConfigError, match=key):
        load_config(Path(__file__).resolve().parent.parent / "configs" / config, [override])


def test_a_shipped_config_is_found_by_name_from_any_directory(tmp_path, monkeypatch):
    from trainer.config import SHIPPED_CONFIGS, config_path

    monkeypatch.chdir(tmp_path)  # no configs/ here: an installed rrg's users run from their own directories
    for name in ("demo", "demo.yaml", "configs/demo.yaml", str(SHIPPED_CONFIGS / "demo.yaml")):
        assert config_path(name) == SHIPPED_CONFIGS / "demo.yaml", name
    assert config_path("datasets/padchest") == SHIPPED_CONFIGS / "datasets" / "padchest.yaml"
    assert load_config("tiny").name == "tiny"  # its base: demo.yaml resolved beside it
    (tmp_path / "demo.yaml").write_text(f"base: {SHIPPED_CONFIGS / 'tiny.yaml'}\nname: mine\n")
    assert config_path("demo.yaml") == Path("demo.yaml") and load_config("demo.yaml").name == "mine"  # a file wins
    with pytest.raises(ConfigError, match=r"config file not found: nope.yaml \(nor a shipped config: .*datasets/padchest.*demo"):
        config_path("nope.yaml")
