"""The streaming shard reader on tiny real shard sets: balance, exact resume, world-size change, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shards import plan
from shards.config import DataConfig
from shards.manifest import ManifestError
from shards.reader import DataError, ShardLoader, make_loader

sys.path.insert(0, str(Path(__file__).parent))
from shardkit import all_keys, write_shard_set  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIZES = [7, 13, 5, 11, 4]  # 40 samples, deliberately unequal shards
SIZES_ODD = [7, 13, 5, 11, 4, 3]  # 43 samples


def image_builder(s):
    return {"image": s.images[0], "key": s.key}


@pytest.fixture(scope="module")
def shards40(tmp_path_factory):
    return write_shard_set(tmp_path_factory.mktemp("s40"), {"train": SIZES})


@pytest.fixture(scope="module")
def shards43(tmp_path_factory):
    return write_shard_set(tmp_path_factory.mktemp("s43"), {"train": SIZES_ODD})


def loader(manifest, rank=0, world_size=1, **kw):
    args = dict(batch_size=4, seed=7, num_workers=0, shuffle_buffer=6, verify="checksum")
    args.update(kw)
    return ShardLoader(manifest, "train", rank=rank, world_size=world_size, **args)


def take(ld, n=None):
    """Keys of the next ``n`` batches (default: the rest of the epoch), closing the iterator."""
    it, out = iter(ld), []
    for batch in it:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    it.close()
    return out


def real_keys(batches):
    return [k for b in batches for k, w in zip(b["keys"], b["sample_weight"].tolist()) if w == 1.0]


def test_two_ranks_two_workers_see_every_sample_once(shards40):
    ranks = [loader(shards40, r, 2, num_workers=2, builder=image_builder) for r in range(2)]
    got = [take(ld) for ld in ranks]
    assert len(got[0]) == len(got[1]) == len(ranks[0]) == len(ranks[1]) == 5
    keys = real_keys(got[0]) + real_keys(got[1])
    assert Counter(keys) == Counter(all_keys("train", SIZES))
    assert got[0][0]["image"].shape == (4, 32, 32)
    # the DataLoader's round-robin reproduces the planned batch sequence exactly
    order = plan.epoch_order(SIZES, 7, 0)
    seg = plan.Segment(2, 2, 4, 6)
    planned = plan.rank_batches(order, 1, seg, seed=7, epoch=0, segment=0, mode="train")
    flat = all_keys("train", SIZES)
    assert [b["keys"] for b in got[1]] == [[flat[i] for i in b] for b in planned]


def test_train_drops_less_than_a_batch_per_rank_a_different_one_each_epoch(shards43):
    ranks = [loader(shards43, r, 3) for r in range(3)]
    unseen = []
    for epoch in range(2):
        for ld in ranks:
            ld.set_epoch(epoch)
        got = [take(ld) for ld in ranks]
        assert [len(g) for g in got] == [3, 3, 3]
        seen = sum((real_keys(g) for g in got), [])
        assert len(seen) == len(set(seen)) == 36 and ranks[0].dropped == 43 - 36
        unseen.append(set(all_keys("train", SIZES_ODD)) - set(seen))
    assert unseen[0] != unseen[1]


def test_eval_pads_short_ranks_every_sample_exactly_once(shards43):
    ranks = [loader(shards43, r, 3, mode="eval", num_workers=2, builder=image_builder) for r in range(3)]
    got = [take(ld) for ld in ranks]
    assert [len(g) for g in got] == [4, 4, 4]  # ceil(43 / 3) = 15 -> 4 batches of 4 on every rank
    assert Counter(sum((real_keys(g) for g in got), [])) == Counter(all_keys("train", SIZES_ODD))
    weights = np.concatenate([b["sample_weight"].numpy() for g in got for b in g])
    assert (weights == 0).sum() == 3 * 16 - 43
    assert all(b["image"].shape == (4, 32, 32) for g in got for b in g)


def test_eval_rank_with_only_pads_still_yields_its_batch(tmp_path):
    manifest = write_shard_set(tmp_path, {"train": [2, 3]})
    ranks = [loader(manifest, r, 4, mode="eval", builder=image_builder) for r in range(4)]
    got = [take(ld) for ld in ranks]  # ceil(5 / 4) = 2 per rank: ranks 0-1 full, rank 2 has 1, rank 3 none
    assert [len(g) for g in got] == [1, 1, 1, 1]
    assert got[3][0]["sample_weight"].tolist() == [0.0] * 4 and got[3][0]["image"].shape == (4, 32, 32)
    assert Counter(sum((real_keys(g) for g in got), [])) == Counter(all_keys("train", [2, 3]))


def test_decode_fills_every_field_of_the_sample(shards40):
    def builder(s):
        return {"key": s.key, "masks": s.masks is not None and s.masks.shape == (2, 32, 32) and bool(s.masks.all()),
                "kg": None if s.kg is None else s.kg["edge_index"].shape, "report": s.report,
                "image": s.images[0].dtype == np.uint8 and s.images[0].shape == (32, 32)}

    items = [it for b in take(loader(shards40, builder=builder, collate=lambda items: {"items": items}))
             for it in b["items"]]
    assert len(items) == 40 and all(it["image"] and it["report"].startswith("FINDINGS") for it in items)
    for it in items:
        i = int(it["key"].split("_")[1])
        assert it["masks"] == (i % 3 == 0) and it["kg"] == ((2, 2) if i % 4 == 1 else None)


def test_epochs_differ_and_seed_reproduces(shards40):
    a, b, c = loader(shards40), loader(shards40), loader(shards40, seed=8)
    first = [x["keys"] for x in take(a)]
    second = [x["keys"] for x in take(a)]  # the next __iter__ starts epoch 1 by itself
    assert a.epoch == 1 and first != second
    assert sorted(sum(first, [])) == sorted(sum(second, []))
    assert [x["keys"] for x in take(b)] == first
    assert [x["keys"] for x in take(c)] != first


def test_exact_resume_in_a_new_process(shards40, tmp_path):
    """States saved mid-epoch, at an epoch's end and inside the next epoch, restored by one fresh process."""
    jobs, references = [], []
    for workers in (0, 1, 2):
        kw = dict(num_workers=workers, batch_size=3, seed=11, shuffle_buffer=4, verify="size")
        ref = loader(shards40, 1, 2, **kw)
        per_epoch, reference = len(ref), []  # 20 samples per rank // 3 = 6 batches
        while len(reference) < 2 * per_epoch:
            reference += [b["keys"] for b in take(ref)]
        for k in (3, per_epoch, per_epoch + 5):  # odd k: worker 1 owns the next batch when W = 2
            ld, done = loader(shards40, 1, 2, **kw), 0
            while done < k:
                left = len(ld) - ld.segments[-1].consumed or len(ld)  # 0 left: the next take starts a new epoch
                done += len(take(ld, min(k - done, left)))
            state = json.loads(json.dumps(ld.state_dict()))
            jobs.append({"root": str(shards40.root), "state": state, "batches": 2 * per_epoch - k,
                         "kwargs": {"rank": 1, "world_size": 2, **kw}})
            references.append((workers, k, reference[k:]))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    code = "import shardkit, sys; shardkit.resume_and_dump(sys.argv[1], sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "jobs.json"), str(tmp_path / "out.json")],
                   check=True, env=env, cwd=tmp_path, timeout=120)
    for (workers, k, expected), got in zip(references, json.loads((tmp_path / "out.json").read_text())):
        assert got == expected, f"num_workers={workers}: resume after {k} batches differs"


@pytest.mark.parametrize("before,after", [((2, 2), (1, 1)), ((1, 0), (2, 2))])
def test_world_size_change_keeps_every_sample_once(shards43, before, after):
    (ws0, nw0), (ws1, nw1) = before, after
    old = [loader(shards43, r, ws0, num_workers=nw0) for r in range(ws0)]
    seen = sum((real_keys(take(ld, 2)) for ld in old), [])
    state = json.loads(json.dumps(old[0].state_dict()))
    new = [loader(shards43, r, ws1, num_workers=nw1, batch_size=3) for r in range(ws1)]
    for ld in new:
        ld.load_state_dict(state)
    rest = [take(ld) for ld in new]
    assert len({len(r) for r in rest}) == 1 and len(new[0]) == 2 + len(rest[0])
    seen += sum((real_keys(r) for r in rest), [])
    assert len(seen) == len(set(seen)), "a sample was seen twice in one epoch"
    assert len(seen) == 43 - new[0].dropped and new[0].dropped < ws1 * 3
    assert [s["consumed"] for s in new[0].state_dict()["segments"]] == [2, len(rest[0])]
    assert new[0].epoch == 0 and take(new[0], 1)[0] and new[0].epoch == 1


def test_bad_input_is_skipped_logged_and_refilled(tmp_path):
    sizes = [9, 12, 6, 13]  # 40
    corrupt, missing = {"train00_004", "train02_001"}, {"train03_010"}
    manifest = write_shard_set(tmp_path, {"train": sizes}, corrupt=corrupt, missing_view=missing,
                               truncate={"train-000001.tar": 8})  # train01_008.. 011 lost
    lost = {f"train01_{i:03d}" for i in range(8, 12)}
    ranks = [loader(manifest, r, 2, num_workers=2, max_skip_fraction=0.5, builder=image_builder)
             for r in range(2)]
    got = [take(ld) for ld in ranks]
    assert len(got[0]) == len(got[1]) == 5
    assert all(b["image"].shape == (4, 32, 32) for g in got for b in g)
    bad = corrupt | missing | lost
    assert Counter(real_keys(got[0]) + real_keys(got[1])) == Counter(set(all_keys("train", sizes)) - bad)
    log = ranks[0].skip_log + ranks[1].skip_log
    assert ranks[0].skipped + ranks[1].skipped == len(bad) == len(log)
    # past the cut the tar has no headers, so those samples are logged by ordinal in their shard
    logged_lost = {"train01_008", "#9", "#10", "#11"}
    assert {k for k, _, _ in log} == corrupt | missing | logged_lost
    assert {s for k, s, _ in log if k in logged_lost} == {"train-000001.tar"}
    assert all("undecodable" in why for k, _, why in log if k in corrupt)
    assert all("truncated" in why for k, _, why in log if k in logged_lost)
    weights = [w for g in got for b in g for w in b["sample_weight"].tolist()]
    assert weights.count(0.0) == len(bad)


def test_too_many_bad_samples_raise_data_error_through_workers(tmp_path):
    corrupt = {f"train00_{i:03d}" for i in range(0, 12, 2)}
    manifest = write_shard_set(tmp_path, {"train": [12, 12]}, corrupt=corrupt)
    with pytest.raises(DataError) as err:
        take(loader(manifest, num_workers=2, max_skip_fraction=0.01))
    msg = str(err.value)
    assert "max_skip_fraction=0.01" in msg and "train00_0" in msg and "split 'train'" in msg


def test_checksum_mismatch_skips_the_whole_shard(tmp_path):
    manifest = write_shard_set(tmp_path, {"train": [8, 12]})
    with open(tmp_path / "train-000000.tar", "ab") as f:
        f.write(b"\0" * 512)  # still a readable tar, but not the one the manifest describes
    ld = loader(manifest, max_skip_fraction=0.5)
    got = take(ld)
    assert ld.skipped == 8 and all("verification" in why for _, _, why in ld.skip_log)
    assert {k for k, _, _ in ld.skip_log} == set(all_keys("train", [8]))
    assert sorted(real_keys(got)) == sorted(set(all_keys("train", [8, 12])) - set(all_keys("train", [8])))
    unchecked = loader(manifest, verify="none")
    assert len(real_keys(take(unchecked))) == 20 and unchecked.skipped == 0
    with pytest.raises(DataError, match="verification"):
        take(loader(manifest, verify="checksum"))


def test_missing_manifest_and_foreign_state_are_clear_errors(tmp_path, shards40):
    with pytest.raises(ManifestError, match="rrg shards build"):
        make_loader(DataConfig(shards_dir=str(tmp_path / "nothing")), "train", rank=0, world_size=1,
                    batch_size=2, seed=0)
    state = loader(shards40).state_dict()
    other = write_shard_set(tmp_path / "other", {"train": [5, 5]})
    with pytest.raises(ManifestError, match="rebuilt"):
        loader(other).load_state_dict(state)
    with pytest.raises(DataError, match="not one batch"):
        loader(other, world_size=4, batch_size=4)


def test_bench_loader_reports_positive_rates(shards40, capsys):
    from trainer.config import RunConfig
    from shards.bench.loader import bench_loader

    cfg = RunConfig()
    cfg.data.shards_dir = str(shards40.root)
    cfg.train.micro_batch_size = 4
    rates = bench_loader(cfg, workers=[0, 1], batches=4, repeats=1)
    assert set(rates) == {0, 1} and all(r > 0 for r in rates.values())
    assert "samples/s" in capsys.readouterr().out
