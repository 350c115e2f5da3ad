"""rrg kg build / attach: train-only KG and bank assets, per-study subgraph sidecar, leak-freedom, bad input."""
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load

from configs.parallel import SerialPool
from shards.config import DataConfig, PassesConfig
from shards.passes.kg.config import KGConfig
from shards.manifest import file_sha256, load_manifest
from shards.reader import iter_decoded
from shards.passes.kg import KGError
from shards.passes.kg.attach import attach, check_existing, make_context, neighbours, subgraph_tensors
from shards.passes.kg.extract import RuleExtractor, parse_entity_list
from shards.passes.kg.graph import build_kg, load_kg

ROOT = Path(__file__).resolve().parent.parent
SCALES = [4, 8, 16]


def _data_cfg(path, **kg):
    return DataConfig(shards_dir=str(path), passes=PassesConfig(kg=KGConfig(scales=SCALES, bank_epochs=2, **kg)))


def test_rule_extractor_relations_and_negation():
    x = RuleExtractor()("FINDINGS: Linear opacity at the left lung base, consistent with atelectasis. "
                        "No pleural effusion or pneumothorax. Small nodule in the right upper lobe.")
    assert ("finding", "effusion") not in x.entities and ("finding", "pneumothorax") not in x.entities
    assert (("finding", "opacity"), "located_at", ("anatomy", "lung base")) in x.triples
    assert (("modifier", "linear"), "modify", ("finding", "opacity")) in x.triples
    assert (("finding", "opacity"), "suggestive_of", ("finding", "atelectasis")) in x.triples
    assert (("finding", "nodule"), "suggestive_of", ("finding", "lung lesion")) in x.triples
    assert not RuleExtractor()("FINDINGS: No pleural effusion. No pneumothorax.").triples
    assert parse_entity_list("finding: effusion; anatomy: left base") == {
        "finding": ["effusion"], "anatomy": ["left base"], "modifier": []}
    assert parse_entity_list("effusion!! ###") is None


@pytest.fixture(scope="module")
def kg_shards(shards, tmp_path_factory):
    """The session shards + the KG build (in process) and `rrg kg attach` through the real CLI, on Ray."""
    out = tmp_path_factory.mktemp("kg") / "shards"
    shutil.copytree(shards, out)
    build_kg(_data_cfg(out), log=lambda *_: None)
    over = [f"data.shards_dir={out}", f"data.passes.kg.scales={json.dumps(SCALES)}", "cluster.ray_temp_dir=/tmp/rr-kg"]
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "kg", "attach", str(ROOT / "configs" / "tiny.yaml"),
                           *over], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "studies/s" in proc.stdout
    return out


@pytest.mark.slow
def test_build_and_attach_via_cli_cover_every_split_never_self(kg_shards, capsys):
    m = load_manifest(kg_shards)
    assert m.assets["kg"].meta["reads_splits"] == ["train"] and m.assets["kg_bank"].meta["reads_splits"] == ["train"]
    assert m.sidecars["kg"].reads_splits == ["train"]
    kg = load_kg(kg_shards)
    nodes = kg["vocab"]["nodes"]
    assert kg["node_features"].shape[0] == len(nodes) and set(kg["edge_type"].tolist()) == {0, 1, 2}
    bank = load(m.assets["kg_bank"].read_bytes("bank.safetensors"))
    assert bank["tokens"].shape[0] == 14 and np.abs(bank["tokens"]).sum() > 0
    seen, empty = 0, 0
    entities_of = np.diff(kg["entity_ptr"])
    for shard in m.shards:
        for s in iter_decoded(m, shard):
            t = s.tensors["kg"]
            assert s.key not in [kg["keys"][i] for i in t["neighbours"]]
            pid = s.record["patient_id"]
            assert pid not in [kg["patients"][i] for i in t["neighbours"]]
            assert len(t["neighbours"]) == 5  # the k nearest, entity-free (normal) studies included
            # an empty subgraph exactly when every neighbour is entity-free: they vote for no entity
            assert (len(t["s0_node_ids"]) == 0) == (entities_of[t["neighbours"]].sum() == 0)
            empty += len(t["s0_node_ids"]) == 0
            for i, scale in enumerate(SCALES):
                ids = t[f"s{i}_node_ids"]
                assert len(ids) <= scale and len(set(ids.tolist())) == len(ids)
                assert t[f"s{i}_edge_index"].max(initial=-1) < len(ids) and t[f"s{i}_edge_type"].max(initial=0) < 3
            assert t["s0_node_ids"].tolist() == t["s2_node_ids"][: len(t["s0_node_ids"])].tolist()
            seen += 1
    assert seen == sum(m.splits.values()) and 0 < empty < seen
    from shards.inspect import inspect_shards

    png = inspect_shards(str(kg_shards), out_png=str(kg_shards.parent / "inspect.png"), split="test")
    out = capsys.readouterr().out
    assert "kg scale 2:" in out and "edges {'located_at'" in out and Image.open(png).width > 1000


def _edit_reports(root: Path, splits=("validate", "test")) -> int:
    """Rewrite every report of ``splits`` in place (new tars, new manifest checksums)."""
    m = load_manifest(root)
    edited = 0
    for info in m.shards:
        if info.split not in splits:
            continue
        path = root / info.file
        members = []
        with tarfile.open(path) as tf:
            for ti in tf:
                data = tf.extractfile(ti).read()
                if ti.name.endswith(".json"):
                    rec = json.loads(data)
                    rec["report"]["text"] = "FINDINGS: Large right pneumothorax. Severe nodular opacity in the left apex."
                    data = json.dumps(rec).encode()
                    edited += 1
                members.append((ti, data))
        with tarfile.open(path, "w") as tf:
            for ti, data in members:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        info.sha256, info.num_bytes = file_sha256(path), path.stat().st_size
    m.write()
    return edited


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for sub in ("assets/kg", "assets/kg_bank", "sidecars/kg"):
        for p in sorted((root / sub).iterdir()):
            if p.name not in ("asset.json", "sidecar.json"):
                out[f"{sub}/{p.name}"] = p.read_bytes()
    return out


@pytest.mark.slow
def test_editing_heldout_reports_leaves_kg_bank_and_every_subgraph_byte_identical(kg_shards, tmp_path):
    edited_root = tmp_path / "edited"
    shutil.copytree(kg_shards, edited_root)
    assert _edit_reports(edited_root) == sum(n for s, n in load_manifest(kg_shards).splits.items() if s != "train")
    cfg = _data_cfg(edited_root)
    build_kg(cfg, log=lambda *_: None)
    attach(cfg, SerialPool(), log=lambda *_: None)
    before, after = _files(kg_shards), _files(edited_root)
    assert before.keys() == after.keys() and any(k.startswith("sidecars/kg/test") for k in after)
    assert all(before[k] == after[k] for k in before), [k for k in before if before[k] != after[k]]
    # and the edit is not a no-op: the same edit on the training split changes the KG
    _edit_reports(edited_root, splits=("train",))
    build_kg(cfg, log=lambda *_: None)
    assert (edited_root / "assets/kg/graph.safetensors").read_bytes() != before["assets/kg/graph.safetensors"]


def test_subgraph_at_300_nodes_fits_20kb_and_is_capped():
    rng = np.random.default_rng(0)
    n, e = 2477, 37424  # M3KG's size
    ei = rng.integers(0, n, (2, e)).astype(np.int32)
    kg = {"vocab": {"nodes": [["finding", str(i)] for i in range(n)]}, "edge_index": ei,
          "edge_type": rng.integers(0, 3, e).astype(np.int32), "edge_count": rng.integers(1, 9, e).astype(np.int32),
          "embeddings": np.eye(3, dtype=np.float32), "keys": ["a", "b", "c"], "patients": ["p", "q", "r"],
          "entity_ptr": np.array([0, 5, 10, 15], np.int32), "entity_ids": np.arange(15, dtype=np.int32)}
    ctx = make_context(kg, KGConfig(scales=[300]))
    from safetensors.numpy import save

    from shards.passes.kg.attach import ranked_nodes

    t = subgraph_tensors(ranked_nodes(np.array([0, 1]), ctx, 300), ctx)
    assert len(t["s0_node_ids"]) == 300 and len(save(t)) <= 20 * 1024
    assert t["s0_edge_index"].shape[1] <= 4 * 300


def _set_patients(root: Path, split: str, patient: str) -> None:
    """Give every study of ``split`` the same patient id (a site exporting one placeholder id)."""
    m = load_manifest(root)
    for info in m.split_shards(split):
        path = root / info.file
        with tarfile.open(path) as tf:
            members = [(ti, tf.extractfile(ti).read()) for ti in tf]
        with tarfile.open(path, "w") as tf:
            for ti, data in members:
                if ti.name.endswith(".json"):
                    rec = json.loads(data)
                    rec["patient_id"] = patient
                    data = json.dumps(rec).encode()
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        info.sha256, info.num_bytes = file_sha256(path), path.stat().st_size
    m.write()


def test_bad_input_names_the_study_and_loses_nothing(kg_shards, tmp_path, capsys):
    from launcher.cli import main
    from shards.passes.kg.attach import ranked_nodes

    kg = load_kg(kg_shards)
    ctx = make_context(kg, KGConfig(scales=SCALES))
    # every training study entity-free (normal): the neighbours vote for nothing, the subgraph is empty
    ctx["ent_ptr"] = np.zeros_like(ctx["ent_ptr"])
    nbrs = neighbours("demo-xyz", "", ctx["emb"][0], ctx)
    assert len(nbrs) == 5 and ranked_nodes(nbrs, ctx, 16) == []
    assert all(v.size == 0 for v in subgraph_tensors([], ctx).values())
    # entity-free training reports above the limit: build fails naming one, nothing written
    root = tmp_path / "s"
    shutil.copytree(kg_shards, root)
    before = _files(root)
    with pytest.raises(KGError, match=r"training reports have no entity .* e\.g\. study demo-\d+"):
        build_kg(_data_cfg(root, max_entity_free_fraction=0.0), log=lambda *_: None)
    assert _files(root) == before
    # below the limit the build prints how many and names them (every one in summary.json)
    logged = []
    build_kg(_data_cfg(root), log=logged.append)
    free = json.loads((root / "assets" / "kg" / "summary.json").read_text())["entity_free_reports"]
    assert free and any(f"{len(free)}/" in line and free[0] in line and "summary.json" in line for line in logged)
    # corrupt sidecar: attach refuses naming the tar; sidecar and assets are left as they were
    tar = next((root / "sidecars" / "kg").glob("validate-*.tar"))
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(KGError, match=f"sidecar 'kg' tar .*{tar.name} is missing or corrupt"):
        check_existing(root)
    assert main(["kg", "attach", str(ROOT / "configs" / "tiny.yaml"), f"data.shards_dir={root}"]) == 3
    assert "is missing or corrupt" in capsys.readouterr().err
    after = _files(root)
    assert all(after[k] == before[k] for k in before if k != f"sidecars/kg/{tar.name}")


@pytest.mark.slow
def test_attach_cli_study_without_neighbours_is_named_and_nothing_is_lost(kg_shards, tmp_path):
    """Every training study of one patient: a study has no training neighbour of another patient."""
    root = tmp_path / "one_patient"
    shutil.copytree(kg_shards, root)
    _set_patients(root, "train", "ANON")
    build_kg(_data_cfg(root), log=lambda *_: None)
    before = _files(root)
    over = [f"data.shards_dir={root}", f"data.passes.kg.scales={json.dumps(SCALES)}", "cluster.ray_temp_dir=/tmp/rr-kg"]
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "kg", "attach", str(ROOT / "configs" / "tiny.yaml"),
                           *over], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"study demo-\d+: no neighbour to retrieve a subgraph from: every training study is this "
                     r"study or its patient's \(ANON\)", proc.stderr), proc.stderr[-2000:]
    assert _files(root) == before  # the earlier sidecar is untouched: a new one is published only whole
    assert not [p for p in (root / "sidecars").iterdir() if p.name.startswith(".")]  # no temp dir left behind


# ---------------------------------------------------------------------------------- the family
def _family_batch(kg_shards, tmp_path):
    from modeling.families.r2genkg.family import R2GenKGFamily
    from trainer.config import load_config

    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"), []).model
    cfg.family, cfg.options = "r2genkg", {"num_scales": len(SCALES), "dim": 32, "kg_queries": 2}
    family = R2GenKGFamily(cfg)
    m = load_manifest(kg_shards)
    train = [s.report for s in iter_decoded(m, m.split_shards("train")[0])]
    tok = family.tokenizer(train, str(tmp_path / "tok"))
    samples = list(iter_decoded(m, m.split_shards("test")[0]))[:3]
    build = family.sample_builder(tok, "eval")
    batch = family.collate(tok)([row for s in samples for row in build(s)])
    return family, tok, batch, samples


@pytest.mark.slow
def test_r2genkg_export_reload_same_text_and_ablations_change_inputs(kg_shards, tmp_path):
    import torch

    from modeling.family import GenConfig

    family, tok, batch, samples = _family_batch(kg_shards, tmp_path)
    torch.manual_seed(0)
    assets = {n: str(kg_shards / "assets" / n) for n in family.asset_names}
    model = family.build_model(tok, assets)
    groups = family.trainable_groups(model, "lora")
    model.eval()  # after LoRA wrapping: its dropout is off
    assert [g.name for g in groups] == ["kg_fusion", "lora"] and all(g.params for g in groups)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter matter for the round trip
        for n, p in model.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    gen = GenConfig(max_new_tokens=10)
    before = [g.generated for g in family.generate(model, tok, batch, gen)]
    tensors = {k: v for k, v in batch.items() if torch.is_tensor(v) and k != "sample_weight"}
    logits = model(**tensors).logits
    family.save_pretrained(model, str(tmp_path / "export"))
    assert (tmp_path / "export" / "assets" / "kg" / "graph.safetensors").is_file()
    reloaded = type(family).load_pretrained(str(tmp_path / "export")).eval()
    assert [g.generated for g in family.generate(reloaded, tok, batch, gen)] == before and any(before)
    assert torch.allclose(reloaded(**tensors).logits, logits, atol=1e-5)
    # ablations: "kg" empties every subgraph, "black" also blanks image and bank; both change the output
    for kind in ("kg", "black"):
        ab = family.ablate(batch, kind)
        assert all((ab[k] == -1).all() for k in ab if k.startswith("kg"))
        assert (ab["pixel_values"] != batch["pixel_values"]).any() == (kind == "black") and (ab["bank_gate"] == 0).all() == (kind == "black")
        out = model(**{k: v for k, v in ab.items() if torch.is_tensor(v) and k != "sample_weight"}).logits
        assert (out - logits).abs().max() > 1e-4
    # a study without its kg tensors, or with a corrupt subgraph, is named
    build = family.sample_builder(tok, "eval")
    bare = samples[0]
    bare.tensors = {}
    with pytest.raises(ValueError, match=f"study {bare.key}: no 'kg' subgraph"):
        build(bare)
    bad = samples[1]
    bad.tensors["kg"]["s0_edge_index"] = bad.tensors["kg"]["s0_edge_index"] + 100
    with pytest.raises(ValueError, match=f"study {bad.key}: kg subgraph scale 0 is corrupt"):
        build(bad)
