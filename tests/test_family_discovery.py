"""Family discovery: every package of modeling/families/, and a user's own from RRG_FAMILY_PATH; a package that
does not import is an error naming it, never a silent skip."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modeling.family import FAMILIES, FAMILY_PATH_ENV, FamilyImportError, family_class, family_packages
from tests.trainkit import ROOT, step_losses

SHIPPED = {"llava_rad", "radixpert", "llava_ta", "llava_t", "r2genkg", "lvmed_r2"}

TOY = '''
from modeling.family import FAMILIES, ParamGroup
from modeling.vlm import VLMFamily


@FAMILIES.register("toy_vlm")
class ToyVLMFamily(VLMFamily):
    """The shared VLM under a name of its own; only its projector trains."""

    name = "toy_vlm"

    def trainable_groups(self, model, mode, spec=None):
        return [ParamGroup("projector", list(model.projector.parameters()))]
'''


def family_dir(root: Path, package: str, source: str) -> Path:
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def family_path(monkeypatch):
    """Point RRG_FAMILY_PATH at a directory for one test; sys.path is restored after it."""
    monkeypatch.setattr(sys, "path", list(sys.path))

    def use(*dirs: Path) -> None:
        monkeypatch.setenv(FAMILY_PATH_ENV, os.pathsep.join(map(str, dirs)))

    return use


def test_every_shipped_family_is_discovered(monkeypatch):
    monkeypatch.delenv(FAMILY_PATH_ENV, raising=False)
    family_class("llava_rad")
    assert SHIPPED <= set(FAMILIES.names())
    packages = {name for name, _ in family_packages()}
    assert {f"modeling.families.{p}" for p in ("llava_rad", "radixpert", "llava_ta", "r2genkg", "lvmed_r2")} <= packages


def test_a_family_package_that_raises_on_import_is_an_error_naming_it(tmp_path, family_path):
    family_path(family_dir(tmp_path, "broken_family", 'raise RuntimeError("no weights here")\n'))
    with pytest.raises(FamilyImportError) as err:
        family_class("llava_rad")
    assert "broken_family" in str(err.value) and "RuntimeError: no weights here" in str(err.value), err.value
    assert "broken_family" not in sys.modules


def test_the_cli_names_a_family_package_that_does_not_import_in_one_line(tmp_path):
    family_dir(tmp_path, "broken_family", 'raise RuntimeError("no weights here")\n')
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "config", "show", "configs/tiny.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **{FAMILY_PATH_ENV: str(tmp_path)}))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("rrg: ") and "broken_family" in lines[-1] and "no weights here" in lines[-1], lines


def test_two_packages_registering_one_family_name_is_an_error(tmp_path, family_path):
    family_path(family_dir(tmp_path, "second_llava_rad", '''
        from modeling.family import FAMILIES
        from modeling.vlm import VLMFamily

        @FAMILIES.register("llava_rad")
        class Again(VLMFamily):
            name = "llava_rad"
        '''))
    with pytest.raises(FamilyImportError) as err:
        family_class("llava_rad")
    msg = str(err.value)
    assert "second_llava_rad" in msg and "'llava_rad' registered twice" in msg, msg
    assert "modeling.families.llava_rad.family" in msg, msg  # the first registration is named too
    assert FAMILIES.get("llava_rad").__module__ == "modeling.families.llava_rad.family"  # the first one stays


def test_a_family_package_shadowed_by_another_module_is_an_error(tmp_path, family_path):
    family_path(family_dir(tmp_path, "shards", "raise AssertionError('never imported')\n"))
    with pytest.raises(FamilyImportError, match="shadowed"):
        family_class("llava_rad")


def test_a_family_path_entry_that_is_not_a_directory_is_an_error(tmp_path, family_path):
    family_path(tmp_path / "missing")
    with pytest.raises(FamilyImportError, match="not a directory"):
        family_class("llava_rad")


@pytest.mark.slow
def test_a_family_outside_the_checkout_trains_through_rrg_train(shards, tmp_path):
    families = family_dir(tmp_path / "families", "toy_family", TOY)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "train", "configs/tiny.yaml", "model.family=toy_vlm",
                           "train.max_steps=2", "cluster.backend=torchrun", "cluster.num_workers=1",
                           f"data.shards_dir={shards}", f"output_dir={out}", "logging.wandb.mode=disabled"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, **{FAMILY_PATH_ENV: str(families)}, WANDB_MODE="disabled"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {1, 2} <= set(step_losses(out)), (out / "train_log.jsonl").read_text()
    assert "family: toy_vlm" in (out / "config.yaml").read_text()


def test_packing_a_family_that_takes_no_packed_batches_is_refused_by_the_config(tmp_path, family_path):
    from configs.schema import ConfigError
    from trainer.config import load_config

    family_path(family_dir(tmp_path, "unpacked_family", TOY.replace('"toy_vlm"', '"unpacked_vlm"').replace(
        "    name = \"unpacked_vlm\"\n", "    name = \"unpacked_vlm\"\n    supports_packing = False\n")))
    tiny = str(ROOT / "configs" / "tiny.yaml")
    load_config(tiny, ["model.family=unpacked_vlm", "train.packing.enabled=false"])  # unpacked: a fine family
    with pytest.raises(ConfigError) as err:
        load_config(tiny, ["model.family=unpacked_vlm", "train.packing.enabled=true"])
    assert "train.packing.enabled" in str(err.value) and "unpacked_vlm" in str(err.value)
    assert all(family_class(n).supports_packing for n in SHIPPED)
