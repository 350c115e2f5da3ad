"""NLG metrics scored exactly as the COCO caption toolkit (pycocoevalcap 1.2) scores them.

Every score here equals pycocoevalcap's on the same inputs (tested to 1e-4
against the live toolkit, Java tokenizer included):

* tokenisation: :func:`trainer.evaluation.ptb.tokenize` (PTBTokenizer ``-preserveLines
  -lowerCase`` + the toolkit's punctuation filter), references and
  generations alike;
* BLEU-1..4: *corpus* BLEU (clipped n-gram counts and lengths summed over the
  set, one brevity penalty with the "closest" reference length), BLEU-k the
  geometric mean of p1..pk, the toolkit's 1e-15/1e-9 smoothing;
* ROUGE-L: LCS F-measure with beta=1.2 per example, averaged; tokens come from
  ``str.split(" ")`` so an empty generation is one empty token, as there;
* CIDEr (the toolkit's "CIDEr" is CIDEr-D): n=1..4, sigma=6, tf-idf with
  document frequencies from the references of the evaluated set, hypothesis
  weights clipped at the reference's, Gaussian length penalty on the number
  of *bigrams* (the toolkit's quirk), x10;
* METEOR 1.5 through the toolkit's own jar and ``Meteor`` class (``-l en
  -norm``) when ``java`` is on PATH; otherwise it is reported as not computed,
  never replaced by something else under the same name.

For bootstrap intervals each metric also exposes per-example statistics from
which the corpus score of any resample is recomputed the toolkit's way
(BLEU from summed counts, CIDEr with document frequencies of the resampled
references, METEOR from the jar's aggregated segment statistics).
"""
from __future__ import annotations

import math
import shutil
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

from trainer.evaluation.ptb import tokenize

__all__ = ["tokenize", "BleuStats", "bleu_stats", "bleu_from_stats", "bleu", "rouge_l", "cider_d",
           "MeteorScorer", "java_available", "METEOR_MISSING", "nlg_scores"]

METEOR_MISSING = "METEOR: not computed (java not found)"
_TINY, _SMALL = 1e-15, 1e-9


def _ngrams(words: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


@dataclass(frozen=True)
class BleuStats:
    """Sufficient statistics of one example for corpus BLEU."""

    testlen: int
    reflen: int  # the "closest" reference length
    guess: tuple[int, ...]
    correct: tuple[int, ...]


def bleu_stats(refs: Sequence[str], hyp: str, n: int = 4) -> BleuStats:
    words = hyp.split()
    max_ref: Counter = Counter()
    lens = []
    for ref in refs:
        rw = ref.split()
        lens.append(len(rw))
        for g, c in _ngrams(rw, n).items():
            max_ref[g] = max(max_ref[g], c)
    testlen = len(words)
    reflen = min((abs(length - testlen), length) for length in lens)[1]
    correct = [0] * n
    for g, c in _ngrams(words, n).items():
        correct[len(g) - 1] += min(max_ref.get(g, 0), c)
    guess = tuple(max(0, testlen - k + 1) for k in range(1, n + 1))
    return BleuStats(testlen, reflen, guess, tuple(correct))


def bleu_from_stats(stats: Sequence[BleuStats], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n from summed statistics (the toolkit's compute_score)."""
    testlen = sum(s.testlen for s in stats)
    reflen = sum(s.reflen for s in stats)
    scores, prod = [], 1.0
    for k in range(n):
        prod *= (sum(s.correct[k] for s in stats) + _TINY) / (sum(s.guess[k] for s in stats) + _SMALL)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        scores = [b * math.exp(1 - 1 / ratio) for b in scores]
    return scores


def bleu(refs: Sequence[Sequence[str]], hyps: Sequence[str], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n over tokenised references (lists) and hypotheses."""
    return bleu_from_stats([bleu_stats(r, h, n) for r, h in zip(refs, hyps)], n)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(refs: Sequence[Sequence[str]], hyps: Sequence[str], beta: float = 1.2) -> list[float]:
    """Per-example ROUGE-L (the corpus value is their mean)."""
    out = []
    for rs, hyp in zip(refs, hyps):
        hw = hyp.split(" ")
        precs, recs = [], []
        for ref in rs:
            rw = ref.split(" ")
            lcs = lcs_length(rw, hw)
            precs.append(lcs / len(hw))
            recs.append(lcs / len(rw))
        p, r = max(precs), max(recs)
        out.append((1 + beta ** 2) * p * r / (r + beta ** 2 * p) if p and r else 0.0)
    return out


class _CiderCounts:
    """n-gram counts of each example, computed once and reused by every resample."""

    def __init__(self, refs: Sequence[Sequence[str]], hyps: Sequence[str], n: int):
        self.n = n
        self.hyp = [_ngrams(h.split(), n) for h in hyps]
        self.refs = [[_ngrams(r.split(), n) for r in rs] for rs in refs]
        self.ref_sets = [set().union(*rc) for rc in self.refs]


def _cider_vec(counts: Counter, df: Counter, log_n: float, n: int):
    vec: list[dict] = [{} for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for g, tf in counts.items():
        k = len(g) - 1
        w = tf * (log_n - math.log(max(1.0, df[g])))
        vec[k][g] = w
        norm[k] += w * w
        if k == 1:  # the toolkit measures length in bigrams
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def _cider_scores(cc: _CiderCounts, index: Sequence[int], sigma: float) -> list[float]:
    df: Counter = Counter()
    for i in index:
        df.update(cc.ref_sets[i])
    log_n = math.log(float(len(index)))
    cache: dict[int, float] = {}
    for i in set(index):
        vh, nh, lh = _cider_vec(cc.hyp[i], df, log_n, cc.n)
        total = [0.0] * cc.n
        for rcount in cc.refs[i]:
            vr, nr, lr = _cider_vec(rcount, df, log_n, cc.n)
            pen = math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
            for k in range(cc.n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * pen
        cache[i] = sum(total) / cc.n / len(cc.refs[i]) * 10.0
    return [cache[i] for i in index]


def cider_d(refs: Sequence[Sequence[str]], hyps: Sequence[str], n: int = 4, sigma: float = 6.0,
            index: Optional[Sequence[int]] = None, counts: Optional[_CiderCounts] = None) -> list[float]:
    """Per-example CIDEr-D over the set (or the resample ``index``); the corpus value is the mean.

    Document frequencies come from the references of the examples in ``index``
    (a repeated example counts once per occurrence, as distinct images would).
    """
    cc = counts or _CiderCounts(refs, hyps, n)
    return _cider_scores(cc, list(range(len(cc.hyp))) if index is None else index, sigma)


def java_available() -> bool:
    return shutil.which("java") is not None


class MeteorScorer:
    """METEOR 1.5 via pycocoevalcap's jar and ``Meteor`` class; one JVM per scorer."""

    def __init__(self, language: str = "en"):
        if not java_available():
            raise RuntimeError(METEOR_MISSING)
        from pycocoevalcap.meteor.meteor import Meteor

        if language == "en":
            self._meteor = Meteor()
            return
        # The toolkit ships English paraphrases only: other languages (e.g. Spanish, ``-l es``) run
        # the jar's exact + stem modules, started the way the toolkit starts it for English.
        import os
        import subprocess
        import threading

        import pycocoevalcap.meteor.meteor as toolkit

        m = Meteor.__new__(Meteor)
        m.meteor_cmd = ["java", "-jar", "-Xmx2G", toolkit.METEOR_JAR, "-", "-", "-stdio", "-l", language,
                        "-norm", "-m", "exact stem"]
        m.meteor_p = subprocess.Popen(m.meteor_cmd, cwd=os.path.dirname(os.path.abspath(toolkit.__file__)),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        m.lock = threading.Lock()
        self._meteor = m

    def stats(self, refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> list[str]:
        """The jar's per-segment statistics lines: the toolkit's ``_stat`` requests, pipelined."""
        lines = [" ||| ".join(("SCORE", " ||| ".join(r), h.replace("|||", "").replace("  ", " ")))
                 for r, h in zip(refs, hyps)]  # exactly the line ``Meteor._stat`` writes
        return [answer[0].strip() for answer in self._ask(lines, [1] * len(lines))]

    def aggregate(self, stats: Sequence[str]) -> tuple[float, list[float]]:
        """Corpus METEOR (and segment scores) from statistics lines, as ``compute_score`` reads them."""
        answer = self._ask(["EVAL ||| " + " ||| ".join(stats)], [len(stats) + 1])[0]
        return float(answer[-1].strip()), [float(x.strip()) for x in answer[:-1]]

    def aggregate_many(self, batches: Sequence[Sequence[str]]) -> list[float]:
        """Corpus METEOR of each batch of statistics lines (a bootstrap's resamples), in one pipelined
        exchange; each answer is the jar's own, exactly as ``aggregate`` returns it."""
        answers = self._ask(["EVAL ||| " + " ||| ".join(stats) for stats in batches],
                            [len(stats) + 1 for stats in batches])
        return [float(answer[-1].strip()) for answer in answers]

    def resample_scores(self, stats: Sequence[str], idx) -> list[float]:
        """Corpus METEOR of each bootstrap resample: ``idx`` rows index into ``stats``."""
        return self.aggregate_many([[stats[i] for i in ix] for ix in idx])

    def _ask(self, requests: Sequence[str], answer_lines: Sequence[int]) -> list[list[str]]:
        """Send every request line and read each one's answer lines, pipelined: a thread writes while this
        one reads, so many requests cost no round trips (and a full pipe cannot deadlock)."""
        import threading

        proc = self._meteor.meteor_p
        failed: list[BaseException] = []

        def write() -> None:
            try:
                for line in requests:
                    proc.stdin.write((line + "\n").encode())
                proc.stdin.flush()
            except BaseException as exc:  # a dead JVM: the reader sees EOF and reports it
                failed.append(exc)

        with self._meteor.lock:
            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            out = []
            for count in answer_lines:
                lines = [proc.stdout.readline().decode() for _ in range(count)]
                if not lines[-1]:
                    raise RuntimeError(f"the METEOR jar stopped answering ({failed[0] if failed else 'EOF'})")
                out.append(lines)
            writer.join()
        return out

    def score(self, refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> tuple[float, list[float]]:
        return self.aggregate(self.stats(refs, hyps))

    def close(self) -> None:
        proc = self._meteor.meteor_p
        if proc.poll() is None:
            proc.stdin.close()
            proc.kill()
            proc.wait()


_SHARED: dict[str, MeteorScorer] = {}


def shared_meteor(language: str = "en") -> MeteorScorer:
    """One METEOR JVM per language for the whole process (an evaluation scores the model, the
    baselines and every ablation with it); closed at interpreter exit."""
    scorer = _SHARED.get(language)
    if scorer is None or scorer._meteor.meteor_p.poll() is not None:
        if not _SHARED:
            import atexit

            atexit.register(close_shared_meteor)
        scorer = _SHARED[language] = MeteorScorer(language)
    return scorer


def close_shared_meteor() -> None:
    while _SHARED:
        _SHARED.popitem()[1].close()


def nlg_scores(references: Sequence[str], generated: Sequence[str], meteor: bool = True,
               meteor_language: str = "en") -> dict:
    """All corpus NLG scores for one reference per example: ``bleu_1``..``bleu_4``,
    ``rouge_l``, ``cider``, and ``meteor`` or ``meteor_status``."""
    refs = [[tokenize(r)] for r in references]
    hyps = [tokenize(g) for g in generated]
    out: dict = {f"bleu_{k + 1}": v for k, v in enumerate(bleu(refs, hyps))}
    per_rouge = rouge_l(refs, hyps)
    out["rouge_l"] = sum(per_rouge) / len(per_rouge)
    per_cider = cider_d(refs, hyps)
    out["cider"] = sum(per_cider) / len(per_cider)
    if meteor and java_available():
        out["meteor"] = shared_meteor(meteor_language).score(refs, hyps)[0]
    else:
        out["meteor_status"] = "not computed: java not found" if meteor else "not computed: disabled"
    return out
