"""Deterministic train / validation hold-out, optionally by scene."""
import pytest
from torch.utils.data import Dataset

from fastmde.data import nyu_test_indices, nyu_train_indices, train_val_split


class Toy(Dataset):
    def __init__(self, n, per_scene=None):
        self.n = n
        if per_scene:
            self.scenes = [f"scene_{i // per_scene:03d}" for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def test_standard_test_indices():
    test, train = nyu_test_indices(), nyu_train_indices()
    assert len(test) == 654 and len(train) == 795
    assert test == sorted(set(test)) and 1 <= test[0] and test[-1] <= 1449
    assert set(test).isdisjoint(train)


def test_split_is_deterministic_sized_and_partitions():
    ds = Toy(1000)
    train, val = train_val_split(ds, fraction=0.03, seed=0)
    assert len(val) == 30 and len(train) == 970
    assert sorted(train.indices + val.indices) == list(range(1000))
    again_train, again_val = train_val_split(ds, fraction=0.03, seed=0)
    assert again_val.indices == val.indices and again_train.indices == train.indices
    assert train_val_split(ds, fraction=0.03, seed=1)[1].indices != val.indices
    assert train_val_split(Toy(10), 0.03)[1].indices.__len__() == 1  # at least one item


def test_split_by_scene_shares_no_scene():
    ds = Toy(1000, per_scene=37)
    for seed in range(5):
        train, val = train_val_split(ds, fraction=0.03, seed=seed, by_scene=True)
        train_scenes = {ds.scenes[i] for i in train.indices}
        val_scenes = {ds.scenes[i] for i in val.indices}
        assert train_scenes and val_scenes and train_scenes.isdisjoint(val_scenes)
        assert sorted(train.indices + val.indices) == list(range(1000))
        assert 30 <= len(val) < 30 + 37
    a = train_val_split(ds, 0.03, seed=3, by_scene=True)[1].indices
    assert a == train_val_split(ds, 0.03, seed=3, by_scene=True)[1].indices
    assert a != train_val_split(ds, 0.03, seed=4, by_scene=True)[1].indices


def test_split_errors():
    with pytest.raises(ValueError, match="scenes"):
        train_val_split(Toy(100), by_scene=True)
    with pytest.raises(ValueError, match="fraction"):
        train_val_split(Toy(100), fraction=1.5)
    with pytest.raises(ValueError, match="2 scenes"):
        train_val_split(Toy(10, per_scene=10), by_scene=True)
