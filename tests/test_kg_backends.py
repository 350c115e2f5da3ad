"""KG model backends: local HF directories saved in the real layout (tiny random models), loaded by the real code."""
import numpy as np
import pytest
from transformers import BertConfig, BertForTokenClassification, BertModel, LlamaConfig, LlamaForCausalLM

from modeling.tokenizer import train_tokenizer
from shards.kg_config import KGConfig
from trainer.kg.extract import CausalLMExtractor, RuleExtractor, TokenClassExtractor
from trainer.kg.graph import encoder_features, hashed_features

REPORT = ("FINDINGS: Linear opacity at the left lung base, consistent with atelectasis. No pleural effusion. "
          "Mild cardiomegaly.")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("kgtok")
    train_tokenizer([REPORT] * 4 + ["finding: effusion; anatomy: left base"], 300).save_pretrained(str(d))
    return d


def _save(model, tok_dir, out):
    model.save_pretrained(str(out))
    for f in tok_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return str(out)


def test_causal_lm_backend_malformed_output_counted_and_falls_back_to_rules(tok_dir, tmp_path):
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    path = _save(LlamaForCausalLM(cfg), tok_dir, tmp_path / "lm")
    got = CausalLMExtractor(KGConfig(extractor="hf_causal", extractor_dir=path))(REPORT)
    want = RuleExtractor()(REPORT)
    assert got.fallbacks == 3  # a random LM never answers in the "type: name; ..." grammar
    assert got.entities == want.entities and got.triples == want.triples


def test_token_classification_backend_runs_and_keeps_negation(tok_dir, tmp_path):
    labels = ["O", "B-FINDING", "I-FINDING", "B-ANATOMY", "I-ANATOMY", "B-MODIFIER", "I-MODIFIER"]
    cfg = BertConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_labels=len(labels), id2label=dict(enumerate(labels)),
                     label2id={l: i for i, l in enumerate(labels)})
    path = _save(BertForTokenClassification(cfg), tok_dir, tmp_path / "tc")
    ex = TokenClassExtractor(KGConfig(extractor="hf_token", extractor_dir=path))
    out = ex(REPORT)
    assert out.entities and {t for t, _ in out.entities} <= {"finding", "anatomy", "modifier"}
    assert ("finding", "effusion") not in out.entities  # the negated sentence gives nothing, whatever the model says
    assert ex.model_entities("no pleural effusion") is None or not ex("FINDINGS: No pleural effusion.").triples


def test_node_features_hashed_deterministic_and_local_encoder(tok_dir, tmp_path):
    names = ["finding effusion", "anatomy left lung base", "finding effusion"]
    h = hashed_features(names, 16)
    assert h.shape == (3, 16) and np.allclose(h[0], h[2]) and not np.allclose(h[0], h[1])
    assert np.allclose(np.linalg.norm(h, axis=1), 1.0)
    cfg = BertConfig(vocab_size=300, hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2)
    path = _save(BertModel(cfg), tok_dir, tmp_path / "enc")
    e = encoder_features(names, path)
    assert e.shape == (3, 24) and np.allclose(e[0], e[2], atol=1e-6) and not np.allclose(e[0], e[1])
