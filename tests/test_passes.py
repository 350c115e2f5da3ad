"""Data passes (shards/passes/): each is one package that owns its config section, errors, CLI commands and
``rrg generate`` hook; shared code looks them up.  A user's own pass from RRG_PASS_PATH plugs in the same way."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from configs.schema import ConfigError, from_dict
from shards.config import DataConfig
from shards.passes import PASS_PATH_ENV, all_passes, get_pass, resolve
from tests.trainkit import ROOT

SHIPPED = {"masks", "topics", "kg", "reasoning"}

TOY = '''
from dataclasses import dataclass

from configs.schema import ConfigError
from shards.passes import ANNOTATE, Command, DataPass, register


class ToyError(RuntimeError):
    """The toy pass refuses a word."""


@dataclass
class ToyConfig:
    word: str = "hello"
    repeat: int = 1

    def validate(self, key):
        if self.repeat < 1:
            raise ConfigError(f"{key}.repeat", "must be >= 1")


def _arguments(p):
    p.add_argument("--out", required=True)


def command(args, ctx):
    cfg = ctx.load(args)
    toy = cfg.data.passes.toy
    if toy.word == "forbidden":
        raise ToyError(f"the toy pass refuses the word {toy.word!r}")
    with open(args.out, "w") as fh:
        fh.write(" ".join([toy.word] * toy.repeat) + " " + type(ctx.pool(cfg)).__name__)


def generate(cfg, model_dir):
    return (lambda sample, ctx: {"toy.json": b"{}"}), cfg.data.passes.toy


PASS = register(DataPass(name="toy", summary="a toy pass", config=ToyConfig,
                         errors=(("toy_pass:ToyError", 3),),
                         commands=(Command(ANNOTATE, "toy", "write the configured word", "toy_pass:command", _arguments),),
                         generate="toy_pass:generate"))
'''


def test_the_shipped_passes_own_their_config_errors_commands_and_hooks():
    specs = {p.name: p for p in all_passes()}
    assert SHIPPED <= set(specs)
    data = from_dict(DataConfig, {}, "data")
    for name in SHIPPED:
        section = getattr(data.passes, name)
        assert isinstance(section, specs[name].config)
        for command in specs[name].commands:
            assert callable(resolve(command.run)), command
        for spec, code in specs[name].errors:
            assert issubclass(resolve(spec), Exception) and code in (2, 3, 4, 5, 6), spec
    # the two passes whose output a model reads at inference make it for a new study themselves
    assert {n for n, p in specs.items() if p.generate} == {"masks", "kg"}
    assert callable(resolve(specs["kg"].generate)) and callable(resolve(specs["kg"].inspect))


def test_a_pass_section_at_its_old_place_is_read_as_data_passes():
    """Run configs of exports written before data.passes (data.masks: ...) still load; an old-style override of a
    new-style base wins over it, key by key."""
    data = from_dict(DataConfig, {"masks": {"path": "/seg", "threshold": 0.3},
                                  "passes": {"masks": {"threshold": 0.7, "name": "lungs"}}}, "data")
    assert (data.passes.masks.path, data.passes.masks.threshold, data.passes.masks.name) == ("/seg", 0.3, "lungs")
    with pytest.raises(ConfigError, match=r"data\.passes\.kg\.scale'.*unknown key"):
        from_dict(DataConfig, {"kg": {"scale": [1]}}, "data")
    with pytest.raises(ConfigError, match=r"data\.passes\.nope'.*unknown key"):
        from_dict(DataConfig, {"passes": {"nope": {}}}, "data")
    data.passes.kg.neighbours = 0
    with pytest.raises(ConfigError, match=r"data\.passes\.kg\.neighbours"):
        data.validate()


def test_shared_code_names_no_pass_and_no_family():
    """runguard, rrg generate, the CLI and the training loop look passes and families up; none names one."""
    from modeling.family import FAMILIES, import_families

    import_families()
    names = {p.name for p in all_passes()} | set(FAMILIES.names())
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\b", re.IGNORECASE)
    for rel in ("trainer/loop.py", "trainer/worker.py", "trainer/runguard.py", "trainer/evaluation/infer_files.py",
                "launcher/cli.py"):
        found = [(i, m.group(0)) for i, line in enumerate((ROOT / rel).read_text().splitlines(), 1)
                 for m in pattern.finditer(line)]
        assert not found, f"{rel} names {found}"


def _rrg(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_pass_in_one_folder_gets_its_config_section_command_errors_and_generate_hook(tmp_path):
    (tmp_path / "plugins" / "toy_pass").mkdir(parents=True)
    (tmp_path / "plugins" / "toy_pass" / "__init__.py").write_text(textwrap.dedent(TOY))
    env = {**os.environ, PASS_PATH_ENV: str(tmp_path / "plugins"), "RAY_USAGE_STATS_ENABLED": "0"}
    demo = str(ROOT / "configs" / "demo.yaml")

    shown = _rrg(["config", "show", demo, "data.passes.toy.word=radiograph"], env)
    assert shown.returncode == 0, shown.stderr
    import yaml

    assert yaml.safe_load(shown.stdout)["data"]["passes"]["toy"] == {"word": "radiograph", "repeat": 1}
    assert "toy" in _rrg(["annotate", "--help"], env).stdout  # the pass's command, under the shared group

    out = tmp_path / "toy.txt"
    ran = _rrg(["annotate", "toy", demo, "--out", str(out), "data.passes.toy.word=lung", "data.passes.toy.repeat=2",
                "cluster.num_workers=1"], env)
    assert ran.returncode == 0, ran.stderr
    assert out.read_text().split()[:2] == ["lung", "lung"]  # the typed section reached the command
    # its own validation, its own error and exit code: one line, no traceback
    bad = _rrg(["annotate", "toy", demo, "--out", str(out), "data.passes.toy.repeat=0"], env)
    assert bad.returncode == 2 and "data.passes.toy.repeat" in bad.stderr and "Traceback" not in bad.stderr
    refused = _rrg(["annotate", "toy", demo, "--out", str(out), "data.passes.toy.word=forbidden",
                    "cluster.num_workers=1"], env)
    assert refused.returncode == 3, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == "rrg: the toy pass refuses the word 'forbidden'"
    # rrg generate reaches its per-study function through the registry
    probe = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from trainer.config import RunConfig
        from trainer.evaluation.infer_files import derived_passes
        cfg = RunConfig()
        [(name, make, ctx)] = derived_passes(["toy"], cfg, None)
        print(name, make(None, ctx), ctx.word)
        """)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["toy", "{'toy.json':", "b'{}'}", "hello"]


def test_a_pass_package_that_does_not_import_is_an_error_naming_it(tmp_path):
    (tmp_path / "broken_pass").mkdir()
    (tmp_path / "broken_pass" / "__init__.py").write_text("raise RuntimeError('half-written pass')\n")
    env = {**os.environ, PASS_PATH_ENV: str(tmp_path)}
    run = _rrg(["config", "show", str(ROOT / "configs" / "demo.yaml")], env)
    assert run.returncode != 0
    assert "pass package broken_pass" in run.stderr and "half-written pass" in run.stderr, run.stderr
    assert get_pass("kg").name == "kg"  # this process is untouched


def test_rrg_generate_names_the_passes_it_can_run():
    from trainer.evaluation.infer_files import GenerateError, derived_passes
    from trainer.config import RunConfig

    with pytest.raises(GenerateError, match=r"the run config names no segmenter: set data\.passes\.masks\.path"):
        derived_passes(["masks"], RunConfig(), Path("."))
    with pytest.raises(GenerateError, match=r"cannot make \(it makes \['kg', 'masks'\]\)"):
        derived_passes(["depth"], RunConfig(), Path("."))
