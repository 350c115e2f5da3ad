"""The lvmed_r2 family: corrupted span at zero loss weight, leak-free eval batches, reflection switch, export."""
import copy as copy_mod
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.parallel import SerialPool
from modeling.family import GenConfig, TargetError, build_family
from modeling.vlm import IGNORE, weighted_lm_loss
from shards.config import DataConfig
from shards.reader import make_loader
from shards.passes.reasoning.config import ReasoningConfig
from shards.passes.reasoning.annotate import annotate_reasoning
from shards.passes.reasoning.chain import build_tree, extract_final_report, sentence_counts, template_chain
from shards.records import DecodedSample
from tests.reasoningkit import edit_reports, shard_copy
from tests.test_reasoning_data import OTHERS, REPORT
from trainer.config import load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fam_tok():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["model.family=lvmed_r2"]).model
    fam = build_family(cfg)
    tree = build_tree(sentence_counts([REPORT, *OTHERS]), 2)
    ann = template_chain(REPORT, tree, 0, "s1")
    tok = fam.tokenizer(fam.tokenizer_texts([{"report": {"text": r}} for r in [REPORT, *OTHERS]], [ann]))
    return fam, tok, ann


def _sample(ann, key="s1"):
    img = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    return DecodedSample(key, "train-000000.tar", {"study_id": key, "split": "train", "report": {"text": REPORT}},
                         [img], annotations={"reasoning": ann} if ann else {})


def test_corrupted_span_carries_zero_loss_weight_by_default(fam_tok):
    fam, tok, ann = fam_tok
    row = fam.sample_builder(tok, "train", "reflection")(_sample(ann))[0]
    ids, labels = row["input_ids"], row["labels"]
    text = tok.decode(ids)
    a, b = ann["corrupt_span"]
    wrong = ann["reflection"][a:b]
    assert wrong in text and ann["reflection"][b:].strip()[:40] in text  # the whole chain is the target
    masked = tok.decode(ids[labels == IGNORE])
    assert wrong.strip() in masked and "Reflection:" not in masked  # the span is out, the reflection is in
    # loss level: the logits at the span's positions get no gradient; elsewhere in the chain they do
    logits = torch.randn(1, len(ids), len(tok), requires_grad=True)
    loss, weight = weighted_lm_loss(logits, labels[None])
    loss.backward()
    grad = logits.grad[0].abs().sum(-1)
    span_pos = (labels == IGNORE).nonzero().flatten()
    inner = span_pos[span_pos > (labels != IGNORE).nonzero().flatten()[0]]  # inside the chain, past the prompt
    assert len(inner) >= 5 and float(grad[inner - 1].sum()) == 0.0
    assert int(weight) == int((labels[1:] != IGNORE).sum())
    # the flag includes it
    fam.opts.include_corrupt_span = True
    try:
        row2 = fam.sample_builder(tok, "train", "reflection")(_sample(ann))[0]
    finally:
        fam.opts.include_corrupt_span = False
    assert torch.equal(row2["input_ids"], ids) and int((row2["labels"] == IGNORE).sum()) < int((labels == IGNORE).sum())


def test_targets_prompts_and_missing_annotation_is_an_error(fam_tok):
    fam, tok, ann = fam_tok
    rows = {t: fam.sample_builder(tok, "train", t)(_sample(ann))[0] for t in ("report", "reasoning", "reflection")}
    assert len(rows["report"]["input_ids"]) < len(rows["reasoning"]["input_ids"]) // 3
    assert "check each perception" in tok.decode(rows["reflection"]["input_ids"][:90])
    assert all(int((r["labels"] == IGNORE).sum()) >= 1 for r in rows.values())
    # a study without an overlay entry is an error naming it and the command, never a silent report row
    for target in ("reasoning", "reflection"):
        with pytest.raises(TargetError, match=r"study s1 \(shard train-000000.tar\).*rrg annotate reasoning"):
            fam.sample_builder(tok, "train", target)(_sample(None))
    assert torch.equal(fam.sample_builder(tok, "train", "report")(_sample(None))[0]["input_ids"],
                       rows["report"]["input_ids"])  # the report target needs no annotation
    # an entry without a reflection variant (nothing to corrupt) keeps its reasoning row in the reflection stage
    plain = {**ann, "reflection": None, "corrupt_span": None, "corruption": None}
    row = fam.sample_builder(tok, "train", "reflection")(_sample(plain))[0]
    assert torch.equal(row["input_ids"], rows["reasoning"]["input_ids"])
    assert torch.equal(row["labels"], rows["reasoning"]["labels"])
    with pytest.raises(Exception, match="topics"):
        fam.sample_builder(tok, "train", "topics")


def test_packed_reflection_rows_match_unpacked_and_keep_the_span_out(fam_tok):
    """train.packing on lvmed_r2 (the llava_rad path): packed vs unpacked reflection/reasoning rows give the
    same loss and gradients, every study's labels (the corrupted span at -100 included) survive packing,
    and the LM's logits at the span's positions get no gradient in the packed rows either."""
    from modeling.vlm import lm_logits, packed_loss
    from modeling.packing import pack_batch
    from modeling.tokenizer import image_token_id
    from modeling.tuning import LoraConfig, TuningSpec, apply_tuning

    def loss_and_grads(model, batch):
        m = copy_mod.deepcopy(model).train()
        out = m(**{k: v for k, v in batch.items() if torch.is_tensor(v)})
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, out

    fam, tok, _ = fam_tok
    reports = [REPORT, *OTHERS]
    tree = build_tree(sentence_counts(reports), 2)
    samples, targets = [], []
    for i in range(6):
        report = reports[i % 3]
        ann = template_chain(report, tree, i, f"s{i}")
        s = _sample(ann, f"s{i}")
        s.record["report"]["text"] = report
        samples.append(s)
        targets.append("reasoning" if i == 5 else "reflection")
    assert sum(bool(s.annotations["reasoning"]["reflection"]) for s in samples[:5]) >= 3
    rows = [fam.sample_builder(tok, "train", t)(s)[0] for s, t in zip(samples, targets)]
    batch = fam.collate(tok)(rows)
    batch["sample_weight"] = torch.tensor([1.0, 0.5, 1.0, 2.0, 1.0, 0.0])  # a refilled slot weighs 0
    torch.manual_seed(0)
    model = fam.build_model(tok)
    apply_tuning(model, fam, TuningSpec("lora", LoraConfig(r=4, alpha=8, dropout=0.0)))
    n_img = model.vision.num_patches
    lm_len = batch["attention_mask"].sum(1) + n_img - 1
    packed = pack_batch(batch, int(lm_len.sum()) // 2 + int(lm_len.max()) // 2, image_token_id(tok), n_img)
    assert 2 <= packed["input_ids"].shape[0] < 6
    # each study's row, span zeros included, is a segment of a packed row, unchanged
    seg = packed["segment_ids"]
    order = [batch["keys"].index(k) for k in packed["keys"]]
    segments = [(r, int(j)) for r in range(seg.shape[0]) for j in seg[r].unique().tolist() if j > 0]
    assert len(segments) == 6
    for (r, j), i in zip(segments, order):
        n = int(batch["attention_mask"][i].sum())
        assert torch.equal(packed["labels"][r][seg[r] == j], batch["labels"][i, :n])
        assert torch.equal(packed["input_ids"][r][seg[r] == j], batch["input_ids"][i, :n])
    l0, g0, o0 = loss_and_grads(model, batch)
    l1, g1, o1 = loss_and_grads(model, packed)
    torch.testing.assert_close(o1.weight_sum, o0.weight_sum)
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys() and any("lora" in k for k in g0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)
    # logits-level: in the packed rows, a position whose next label is -100 (the span among them) has zero grad
    model.eval()
    embeds, mask, labels = model.embed(packed["pixel_values"], packed["input_ids"], seg, packed["labels"])
    logits = lm_logits(model.lm, embeds, mask, packed=True).detach().requires_grad_()
    loss, _ = packed_loss(logits, labels, mask, True, packed["sample_weight"])
    loss.backward()
    grad = logits.grad.abs().sum(-1)[:, :-1]
    assert float(grad[labels[:, 1:] == IGNORE].sum()) == 0.0
    for r, s, t in zip(rows, samples, targets):  # the span: -100 past the prompt, only in reflection rows
        past_prompt = r["labels"][int((r["labels"] != IGNORE).nonzero()[0]):]
        spanned = t == "reflection" and bool(s.annotations["reasoning"]["corrupt_span"])
        assert (int((past_prompt == IGNORE).sum()) >= 3) is spanned


def _eval_batches(fam, tok, shards_dir):
    cfg = DataConfig(shards_dir=shards_dir, loader_workers=0)
    build = fam.sample_builder(tok, "eval")
    loader = make_loader(cfg, "test", rank=0, world_size=1, batch_size=8, seed=0, mode="eval",
                         builder=lambda s: {**build(s)[0], "has_ann": bool(s.annotations)},
                         collate=lambda items: {"items": items})
    return [(fam.collate(tok)(b["items"]), [r["has_ann"] for r in b["items"]]) for b in loader]


def test_eval_batches_read_no_annotation_and_ignore_test_report_edits(fam_tok, shards, tmp_path):
    fam, tok, _ = fam_tok
    copy = shard_copy(shards, tmp_path)
    annotate_reasoning(copy, ReasoningConfig(), SerialPool())
    before = _eval_batches(fam, tok, copy)
    assert before and not any(has for _, flags in before for has in flags)  # no test study has an annotation
    edit_reports(copy, "test", " Huge right pneumothorax.")
    after = _eval_batches(fam, tok, copy)
    for (b0, _), (b1, _) in zip(before, after, strict=True):
        for k in ("pixel_values", "input_ids", "attention_mask"):
            assert torch.equal(b0[k], b1[k])
        assert b0["references"] != b1["references"]  # the edit did land (references are for scoring only)


def test_generate_reflection_switch_trace_and_export_roundtrip(fam_tok, tmp_path):
    fam, tok, ann = fam_tok
    fam.opts.max_new_tokens = 6
    torch.manual_seed(0)
    model = fam.build_model(tok).eval()
    batch = fam.collate(tok)([fam.sample_builder(tok, "eval")(_sample(None, k))[0] for k in ("a", "b")])
    batch["sample_weight"] = torch.ones(2)
    outs = {r: fam.generate(model, tok, batch, GenConfig(max_new_tokens=1, options={"reflection": r}))
            for r in (False, True)}
    for r, gens in outs.items():
        assert [g.id for g in gens] == ["a", "b"] and all(g.extra["reflection"] is r for g in gens)
        for g in gens:
            assert (g.generated, g.extra["final_report_fallback"]) == extract_final_report(g.trace)
    direct = fam.generate(model, tok, batch, GenConfig(max_new_tokens=3, options={"chain": False, "reflections": []}))
    assert all(g.trace is None and len(tok(g.generated)["input_ids"]) <= 3 for g in direct)  # a report, no chain
    with pytest.raises(Exception, match="family_options"):
        fam.generate(model, tok, batch, GenConfig(options={"reflect": True}))
    # one `rrg eval` scores both settings: the headline's reuses its run (variant == gen), the other flips it
    head = GenConfig(max_new_tokens=1, options={"reflection": False})
    variants = fam.eval_variants(head)
    assert list(variants) == ["reflection_off", "reflection_on"] and variants["reflection_off"] is head
    assert variants["reflection_on"].options == {"reflection": True}
    assert list(fam.eval_variants(GenConfig(options={"reflection": True, "reflections": [True]}))) == ["reflection_on"]
    assert fam.eval_variants(GenConfig(options={"chain": False})) == {}
    for bad in ({"reflections": "yes"}, {"chain": False, "reflections": [True]}, {"chain": False, "reflection": True}):
        with pytest.raises(Exception, match="family_options"):
            fam.eval_variants(GenConfig(options=bad))
    groups = fam.trainable_groups(model, "lora")
    assert [g.name for g in groups] == ["projector", "lora"] and groups[1].params
    with torch.no_grad():
        groups[1].params[1].add_(0.5)  # a trained adapter
    model.eval()  # the new LoRA dropout layers start in training mode
    fam.save_pretrained(model, str(tmp_path / "export"))
    loaded = type(fam).load_pretrained(str(tmp_path / "export")).eval()
    inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    assert torch.allclose(model(**inputs).logits, loaded(**inputs).logits, atol=1e-5)


def test_normal_weight_lowers_the_loss_weight_of_studies_with_nothing_abnormal(fam_tok):
    fam, tok, ann = fam_tok
    normal = "FINDINGS: The lungs are clear. No pleural effusion. The heart is normal in size.\nIMPRESSION: Normal."
    devices = "FINDINGS: Endotracheal tube tip is 4 cm above the carina. The lungs are clear.\nIMPRESSION: Normal."

    def weight(report, target="reasoning", mode="train"):
        sample = _sample(ann)
        sample.record["report"]["text"] = report
        return fam.sample_builder(tok, mode, target)(sample)[0].get("sample_weight", 1.0)

    assert weight(normal) == 1.0  # default: every study weighs 1
    fam.opts.normal_weight = 0.25
    try:
        assert [weight(r) for r in (normal, devices, REPORT)] == [0.25, 1.0, 1.0]  # a device is a finding
        assert weight(normal, "reflection") == 0.25 and weight(normal, "reasoning", "eval") == 1.0
        batch = fam.collate(tok)([fam.sample_builder(tok, "train", "reasoning")(_sample(ann))[0]])
        assert batch["sample_weight"].tolist() == [1.0]
    finally:
        fam.opts.normal_weight = 1.0
    with pytest.raises(Exception, match="normal_weight"):
        type(fam.opts)(normal_weight=0.0).validate()


def test_inline_reflection_shares_the_reasoning_prompt_and_off_bans_the_reflection_header(fam_tok):
    """reflection_mode inline: the reflection stage learns under the reasoning prompt, and reflection off is the
    same model and prompt with the reflection header banned while decoding - a model that would write nothing
    but "Reflection" writes it with reflection on and never with reflection off."""
    from modeling.families.lvmed_r2.family import prompt_ids, reflection_ban

    fam, tok, ann = fam_tok
    prompt_rows = {t: fam.sample_builder(tok, "train", t)(_sample(ann))[0] for t in ("reasoning", "reflection")}
    fam.opts.reflection_mode, fam.opts.max_new_tokens = "inline", 6
    try:
        rows = {t: fam.sample_builder(tok, "train", t)(_sample(ann))[0] for t in ("reasoning", "reflection")}
        torch.manual_seed(0)
        model = fam.build_model(tok).eval()
        batch = fam.collate(tok)([fam.sample_builder(tok, "eval")(_sample(None, k))[0] for k in ("a", "b")])
        batch["sample_weight"] = torch.ones(2)
        word, colon = reflection_ban(tok)[0][0], tok.convert_tokens_to_ids(":")
        head = model.lm.get_output_embeddings()  # "Reflection" first, ":" second, whatever the input
        hook = head.register_forward_hook(lambda m, i, out: out.index_add(
            -1, torch.tensor([word, colon]), torch.tensor([1e4, 5e3]).expand(*out.shape[:-1], 2)))
        try:
            outs = {r: fam.generate(model, tok, batch, GenConfig(max_new_tokens=1, options={"reflection": r}))
                    for r in (False, True)}
        finally:
            hook.remove()
    finally:
        fam.opts.reflection_mode, fam.opts.max_new_tokens = "prompt", 0
    n = len(prompt_ids(tok, fam.cfg, fam.opts, "reasoning"))
    assert torch.equal(rows["reflection"]["input_ids"][:n], rows["reasoning"]["input_ids"][:n])  # one prompt
    assert "check each perception" in tok.decode(prompt_rows["reflection"]["input_ids"][:90])
    assert "check each perception" not in tok.decode(rows["reflection"]["input_ids"][:90])
    # the same reflection chain (corrupted span at -100 included) is learned behind either prompt
    m = len(prompt_ids(tok, fam.cfg, fam.opts, "reflection"))
    assert torch.equal(rows["reflection"]["labels"][n:], prompt_rows["reflection"]["labels"][m:])
    assert not torch.equal(rows["reflection"]["labels"][n:], rows["reasoning"]["labels"][n:])
    assert all("Reflection" in g.trace for g in outs[True])
    assert all("Reflection" not in g.trace and g.trace.startswith("::") for g in outs[False])
    with pytest.raises(Exception, match="reflection_mode"):
        type(fam.opts)(reflection_mode="sometimes").validate()


def test_trace_is_collapsible_in_the_report_and_fallbacks_are_counted():
    from trainer.evaluation.evaluate import fallback_counts
    from trainer.evaluation.report_html import study_card

    recs = [{"id": "a", "reference": "r", "generated": "g", "trace": "Final report:\ng <b>", "final_report_fallback": False},
            {"id": "b", "reference": "r", "generated": "x", "trace": "x", "final_report_fallback": True},
            {"id": "c", "reference": "r", "generated": "y"}]
    assert fallback_counts(recs) == {"final_report_fallback_count": 1}
    html = study_card(recs[0])
    assert '<details class="trace"><summary>full trace</summary><pre>Final report:\ng &lt;b&gt;</pre></details>' in html
    assert "last paragraph scored" in study_card(recs[1]) and "<details" not in study_card(recs[2])


def test_demo_config_defines_the_matching_direct_sft_run():
    """configs/lvmed_r2_sft.yaml = configs/lvmed_r2_demo.yaml with the base family trained on the reports:
    same shards, model sizes, packing, LoRA, eval and step budget; lvmed_r2's typed sections not inherited."""
    demo, sft = load_config(ROOT / "configs" / "lvmed_r2_demo.yaml"), load_config(ROOT / "configs" / "lvmed_r2_sft.yaml")
    assert (demo.model.family, sft.model.family) == ("lvmed_r2", "llava_rad")
    assert sft.model.options == {} and sft.eval.family_options == {}
    assert demo.data == sft.data and demo.train.lora == sft.train.lora and demo.train.packing == sft.train.packing
    assert (demo.model.vision, demo.model.lm, demo.model.projector) == (sft.model.vision, sft.model.lm, sft.model.projector)
    assert sft.model.max_text_len == demo.model.options["max_len"]["report"]
    assert demo.train.max_steps == sft.train.max_steps
    d, s = demo.train.resolved_stages(), sft.train.resolved_stages()
    # the same full-tuning warm-up (steps, lr, vision tower), each on its own target
    assert {**vars(d[0]), "name": None, "target": None} == {**vars(s[0]), "name": None, "target": None}
    assert (d[0].tuning, d[0].train_vision, d[0].target, s[0].target) == ("full", True, "reasoning", "report")
    assert [x.target for x in d[1:]] == ["reasoning", "reflection"] and [x.target for x in s[1:]] == ["report"]
    assert {x.tuning for x in d[1:] + s[1:]} == {"lora"}
    assert {k: v for k, v in vars(demo.eval).items() if k != "family_options"} == \
        {k: v for k, v in vars(sft.eval).items() if k != "family_options"}


def _stage_end_digest(ckpt: Path, output_dir: Path) -> str:
    """Digest of a stage's last checkpoint, LoRA merged, rebuilt here from its ZeRO shards (not by the worker)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from modeling.tuning import apply_tuning, plain_state_dict, weights_digest
    from shards.manifest import load_manifest
    from trainer.checkpoint import DS_TAG
    from trainer.config import config_from_dict
    from trainer.safe_load import safe_torch_load

    meta = json.loads((ckpt / "meta.json").read_text())
    cfg = config_from_dict(meta["config"])
    fam = build_family(cfg.model)
    tok = fam.tokenizer(None, save_dir=str(output_dir / "tokenizer"))
    model = fam.build_model(tok, load_manifest(cfg.data.shards_dir).assets)
    apply_tuning(model, fam, cfg.train.resolved_stages()[meta["stage"]].spec(cfg.train.lora))
    with safe_torch_load():
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=DS_TAG)
    missing = [k for k in model.load_state_dict(state, strict=False).missing_keys if "inv_freq" not in k]
    assert not missing, missing[:5]
    return weights_digest(plain_state_dict(model))


@pytest.mark.slow
def test_two_stage_curriculum_resumes_inside_stage_two_bit_exactly(shards, tmp_path):
    """Stage 1 LoRA on chains (3 steps), stage 2 LoRA on reflection (3 steps), one job: stage 2 starts
    from stage 1's final weights (LoRA merged), and a resume from the checkpoint one step into stage 2
    repeats the uninterrupted run's losses exactly."""
    from tests.trainkit import step_losses, torchrun

    copy = shard_copy(shards, tmp_path)
    annotate_reasoning(copy, ReasoningConfig(), SerialPool())
    common = [f"data.shards_dir={copy}", "model.family=lvmed_r2", "model.options.max_len.reasoning=160",
              "model.options.max_len.reflection=160", "checkpoint.every_steps=4", "checkpoint.keep_last=3",
              "train.stages=[{name: chains, tuning: lora, steps: 3, target: reasoning}, "
              "{name: reflect, tuning: lora, steps: 3, target: reflection}]"]
    torchrun(1, common + [f"output_dir={tmp_path / 'full'}"])
    ckpts = tmp_path / "full" / "checkpoints"
    stage1_end, ckpt = ckpts / "step_0000003", ckpts / "step_0000004"
    assert json.loads((stage1_end / "meta.json").read_text())["stage"] == 0  # saved at the stage's end
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["stage"] == 1 and meta["stage_name"] == "reflect"
    logged = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    starts = [r for r in logged if "stage_start" in r]
    assert [(r["stage_start"], r["step"]) for r in starts] == [("reflect", 3)]
    assert starts[0]["start_weights_sha256"] == _stage_end_digest(stage1_end, tmp_path / "full")
    torchrun(1, common + [f"output_dir={tmp_path / 'resumed'}", f"checkpoint.resume={ckpt}"])
    full, resumed = step_losses(tmp_path / "full"), step_losses(tmp_path / "resumed")
    assert sorted(resumed) == [5, 6] and [resumed[s] for s in (5, 6)] == [full[s] for s in (5, 6)]


def test_reflection_statistics_on_hand_made_traces():
    from trainer.evaluation.eval_hooks import sections_html
    from trainer.evaluation.reflection_stats import reflection_rows_html, reflection_stats

    ref = ("FINDINGS: Moderate cardiomegaly. Moderate left pleural effusion. The lungs are clear.\nIMPRESSION: x.")
    twice = ("Perception:\n- Heart (normal)\n- Pleura (effusion)\n- Lungs (normal)\n"
             "Reflection: heart again, corrected:\n- Heart (cardiomegaly)\n"
             "Reflection: Looking at the pleura again, that description does not fit the image; I correct it.\n"
             "- Pleura (normal): No pleural effusion.\nFinal report:\nCardiomegaly.")
    same = "Perception:\n- Lungs (edema)\nReflection: lungs again, corrected:\n- Lungs (edema)\nFinal report:\nEdema."
    records = [{"id": "a", "reference": ref, "generated": "Cardiomegaly.", "trace": twice},
               {"id": "b", "reference": ref, "generated": "Edema.", "trace": same},
               {"id": "c", "reference": ref, "generated": "Edema.", "trace": "Perception:\n- Heart (normal)\n"
                                                                            "Final report:\nEdema."},
               {"id": "d", "reference": ref, "generated": "Normal.", "trace": ""}]
    s = reflection_stats(records)
    assert (s["reflection_fires"], s["reflection_fires_rate"], s["reflection_multi"], s["reflection_count"]) == \
        (2, 0.5, 1, 3)
    assert (s["reflection_organ_heart"], s["reflection_organ_pleura"], s["reflection_organ_lungs"]) == (1, 1, 1)
    # heart normal->cardiomegaly is right (reference: cardiomegaly); pleura effusion->normal is wrong; lungs unchanged
    assert (s["reflection_changes_finding"], s["reflection_normal_to_abnormal"], s["reflection_abnormal_to_normal"],
            s["reflection_abnormal_to_abnormal"]) == (2, 1, 1, 0)
    assert (s["reflection_change_right"], s["reflection_claim_right"], s["reflection_change_right_rate"]) == (1, 1, 0.5)
    assert (s["generated_distinct_reports"], s["generated_top_report_share"]) == (3, 0.5)
    html = reflection_rows_html(records[0])
    assert html.count("<tr>") == 3 and "cardiomegaly" in html and "effusion" in html
    fam = build_family(load_config(ROOT / "configs" / "tiny.yaml", ["model.family=lvmed_r2"]).model)
    page = sections_html(fam, {"reflection_on": records, "reflection_off": records[2:]})
    assert "Reflections (reflection_on)" in page and "no generated chain reflects" in page


def test_collapse_by_findings_counts_two_wordings_of_one_finding_set_once():
    from trainer.evaluation.reflection_stats import report_collapse

    normal, edema = {"No Finding": 1.0, "Edema": 0.0}, {"No Finding": None, "Edema": 1.0}
    records = [{"generated": g, "gen_labels": gl, "ref_labels": rl} for g, gl, rl in [
        ("Lungs clear.", normal, normal), ("No effusion.", normal, edema), ("Clear lungs.", normal, edema),
        ("Edema.", edema, edema)]]
    got = report_collapse(records)
    assert got == {"generated_distinct_reports": 4, "generated_top_report_share": 0.25,
                   "generated_top_findings_share": 0.75, "reference_top_findings_share": 0.75}
    records[3]["ref_labels"] = {"No Finding": None, "Edema": -1.0}  # uncertain is not positive: its own set
    assert report_collapse(records)["reference_top_findings_share"] == 0.5
    # without labels on every record the findings shares are left out, not guessed
    assert set(report_collapse([{"generated": "x"}, {"generated": "x", "gen_labels": normal}])) == \
        {"generated_distinct_reports", "generated_top_report_share"}


def test_compare_scores_another_runs_predictions_on_the_same_studies(tmp_path):
    from configs.schema import ConfigError
    from trainer.evaluation.evaluate import _score_compare, make_eval_labeler
    from trainer.evaluation.scoring import score

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["eval.bootstrap=0", "eval.meteor=false"])
    labeler = make_eval_labeler(cfg)
    records = [{"id": f"s{i}", "reference": r} for i, r in enumerate([REPORT, *OTHERS])]
    other = [REPORT, OTHERS[0], OTHERS[0]]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "generated": g}) + "\n" for i, g in enumerate(other)))
    got = _score_compare("sft", str(path), records, cfg, labeler)
    want = score([{**r, "generated": g} for r, g in zip(records, other)], bootstrap=0, labeler=labeler, meteor=False)
    assert got["ce_macro_f1_14"] == want["ce_macro_f1_14"] and got["bleu_4"] == want["bleu_4"]
    assert (got["generated_distinct_reports"], round(got["generated_top_report_share"], 3)) == (2, 0.667)
    path.write_text(json.dumps({"id": "s0", "generated": REPORT}) + "\n")
    with pytest.raises(ConfigError, match="lacks 2"):
        _score_compare("sft", str(path), records, cfg, labeler)
