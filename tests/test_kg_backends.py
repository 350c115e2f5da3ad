"""KG model backends: local HF directories saved in the real layout (tiny random models), loaded by the real code."""
import numpy as np
import pytest
from transformers import BertConfig, BertForTokenClassification, BertModel, LlamaConfig, LlamaForCausalLM

from modeling.tokenizer import train_tokenizer
from shards.passes.kg.config import KGConfig
from shards.passes.kg.extract import CausalLMExtractor, RuleExtractor, TokenClassExtractor
from shards.passes.kg.graph import encoder_features, hashed_features

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


def _effusion_tagger(tok_dir, out, labels):
    """A BertForTokenClassification (real layout) whose weights are set so that it tags every token
    spelling "effusion" B-FINDING and every other token O: a known proposal to test negation against.

    The encoder layer's projections are zeroed, so each position's output is its LayerNorm'd word
    embedding; the word embeddings are two orthogonal zero-mean +-1 patterns, and the classifier reads
    one pattern as B-FINDING and the other as O."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    cfg = BertConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_labels=len(labels), id2label=dict(enumerate(labels)),
                     label2id={l: i for i, l in enumerate(labels)})
    model = BertForTokenClassification(cfg)
    finding = torch.tensor([1.0, -1.0] * 16)  # zero mean, unit variance: LayerNorm leaves it as it is
    other = torch.tensor([1.0, 1.0, -1.0, -1.0] * 8)  # orthogonal to ``finding``
    ids = [i for t, i in tok.get_vocab().items() if t.lstrip("Ġ▁").lower() == "effusion"]
    assert ids, "the tokenizer has no whole-word 'effusion' token"
    with torch.no_grad():
        for name, p in model.bert.encoder.named_parameters():
            if "LayerNorm" not in name:
                p.zero_()
        emb = model.bert.embeddings
        emb.position_embeddings.weight.zero_()
        emb.token_type_embeddings.weight.zero_()
        emb.word_embeddings.weight[:] = other
        emb.word_embeddings.weight[ids] = finding
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.weight[labels.index("B-FINDING")] = finding
        model.classifier.weight[labels.index("O")] = other
    return _save(model, tok_dir, out)


def test_token_classification_backend_proposal_is_overruled_by_negation(tok_dir, tmp_path):
    labels = ["O", "B-FINDING", "I-FINDING", "B-ANATOMY", "I-ANATOMY", "B-MODIFIER", "I-MODIFIER"]
    ex = TokenClassExtractor(KGConfig(extractor="hf_token",
                                      extractor_dir=_effusion_tagger(tok_dir, tmp_path / "tagger", labels)))
    proposal = {"finding": ["effusion"], "anatomy": [], "modifier": []}
    # the model proposes "effusion" in both sentences ...
    assert ex.model_entities("No pleural effusion.") == proposal
    assert ex.model_entities("Pleural effusion.") == proposal
    # ... its proposal is used where the finding is present (the rules would also give "pleural effusion")
    present = ex("FINDINGS: Pleural effusion.")
    assert present.entities == {("finding", "effusion")} and present.fallbacks == 0
    # ... and the negation scope drops it where the report negates it: nothing at all comes out
    negated = ex("FINDINGS: No pleural effusion.")
    assert negated.entities == set() and negated.triples == set() and negated.fallbacks == 0


def test_node_features_hashed_deterministic_and_local_encoder(tok_dir, tmp_path):
    names = ["finding effusion", "anatomy left lung base", "finding effusion"]
    h = hashed_features(names, 16)
    assert h.shape == (3, 16) and np.allclose(h[0], h[2]) and not np.allclose(h[0], h[1])
    assert np.allclose(np.linalg.norm(h, axis=1), 1.0)
    cfg = BertConfig(vocab_size=300, hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2)
    path = _save(BertModel(cfg), tok_dir, tmp_path / "enc")
    e = encoder_features(names, path)
    assert e.shape == (3, 24) and np.allclose(e[0], e[2], atol=1e-6) and not np.allclose(e[0], e[1])
