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
