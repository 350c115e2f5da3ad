"""Length bucketing keeps every row once, is seeded, and cuts padding on mixed report/chain lengths."""
import numpy as np

from shards.bucketing import bucket_batches, padding_efficiency


def test_bucketing_covers_every_row_once_is_seeded_and_pads_less():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in np.where(rng.random(512) < 0.5, rng.integers(40, 90, 512), rng.integers(300, 700, 512))]
    plain = [list(range(i, min(i + 8, 512))) for i in range(0, 512, 8)]
    bucketed = bucket_batches(lengths, 8, window=16, seed=1)
    assert sorted(i for b in bucketed for i in b) == list(range(512))
    assert bucketed == bucket_batches(lengths, 8, 16, seed=1) != bucket_batches(lengths, 8, 16, seed=2)
    assert all(min(b) >= 128 * (min(b) // 128) and max(b) < 128 * (min(b) // 128 + 1) for b in bucketed)  # windows
    eff_plain, eff_bucket = padding_efficiency(lengths, plain), padding_efficiency(lengths, bucketed)
    assert eff_plain < 0.6 and eff_bucket > 0.9
    assert sorted(len(b) for b in bucket_batches(list(range(10)), 4, 3, 0)) == [2, 4, 4]  # a short tail kept


def _report_len(sample):
    return {"len": len(sample.record["report"]["text"])}


def _lens(items):
    return {"len": [i["len"] for i in items]}


def _epoch(loader, n=None):
    out = []
    for batch in loader:
        out.append((batch["keys"], batch["len"]))
        if n is not None and len(out) == n:
            break
    return out


def test_reader_buckets_by_length_deterministically_and_resumes_exactly(shards):
    """data.bucket_by_length: the same samples per epoch, regrouped into similar-length batches;
    the same batches on a second pass; a resume mid-window continues exactly."""
    from shards.manifest import load_manifest
    from shards.reader import ShardLoader

    def loader(bucket):
        return ShardLoader(load_manifest(shards), "train", rank=0, world_size=1, batch_size=4, seed=3,
                           num_workers=2, shuffle_buffer=32, builder=_report_len, collate=_lens,
                           bucket_by_length=bucket)

    plain, bucketed = _epoch(loader(False)), _epoch(loader(True))
    assert sorted(k for ks, _ in plain for k in ks) == sorted(k for ks, _ in bucketed for k in ks)
    assert [ks for ks, _ in plain] != [ks for ks, _ in bucketed]
    lengths = [n for _, ns in bucketed for n in ns]
    eff = {name: padding_efficiency([n for _, ns in run for n in ns],
                                    [list(range(i, i + len(ns))) for i, (_, ns) in
                                     zip(np.cumsum([0] + [len(ns) for _, ns in run]), run)])
           for name, run in (("plain", plain), ("bucketed", bucketed))}
    assert eff["bucketed"] > eff["plain"] + 0.05, eff
    assert len(lengths) == sum(len(ks) for ks, _ in plain)
    assert _epoch(loader(True)) == bucketed  # deterministic
    first = loader(True)
    head = _epoch(first, 3)  # three batches into the first window of worker 1 / 2
    resumed = loader(True)
    resumed.load_state_dict(first.state_dict())
    assert head + _epoch(resumed) == bucketed
