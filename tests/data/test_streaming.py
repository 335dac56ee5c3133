import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from divekit import DivekitError, TensorLoader
from divekit.data.streaming import DatasetLoader, EpochSampler


class Squares(Dataset):
    """Example ``i`` is ``(i, i * i)``; counts its reads to show nothing is preloaded."""

    def __init__(self, size):
        self.size, self.reads = size, 0

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        self.reads += 1
        return torch.tensor(index), torch.tensor(index * index)


class Noisy(Dataset):
    """Per-sample random 'augmentation' from all three global generators."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        noise = torch.rand(()) + random.random() + np.random.rand()
        return torch.tensor(index), noise.to(torch.float64)


def same_batches(first, second):
    first, second = list(first), list(second)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert type(a) is type(b) is tuple and len(a) == len(b)
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (0, 3), (2, 3)])
def test_batches_equal_tensor_loaders(shuffle, drop_last, rank, world_size):
    x = torch.arange(23)
    for epoch in (0, 4):
        tensors = TensorLoader(x, x * x, batch_size=4, shuffle=shuffle, drop_last=drop_last,
                               seed=5).shard(rank, world_size)
        streamed = DatasetLoader(Squares(23), batch_size=4, shuffle=shuffle,
                                 drop_last=drop_last, seed=5).shard(rank, world_size)
        tensors.set_epoch(epoch)
        streamed.set_epoch(epoch)
        assert streamed.num_examples == tensors.num_examples
        assert len(streamed) == len(tensors)
        same_batches(streamed, tensors)


def test_sampler_shards_are_disjoint_and_cut_to_one_length():
    shards = [list(EpochSampler(10, shuffle=True, seed=1, epoch=2, rank=r, world_size=3))
              for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert len(set(sum(shards, []))) == 9
    assert list(EpochSampler(10, rank=1, world_size=3)) == [1, 4, 7]


def test_workers_give_the_batches_of_the_main_process():
    dataset = Squares(11)
    main = DatasetLoader(dataset, batch_size=3, shuffle=True, seed=2)
    workers = DatasetLoader(dataset, batch_size=3, shuffle=True, seed=2, num_workers=2)
    for loader in (main, workers):
        loader.set_epoch(1)
    same_batches(workers, main)
    assert dataset.reads == 11  # the main process read each example once; workers read copies


def test_order_depends_only_on_seed_and_epoch_so_resume_is_exact():
    def epoch_indices(loader, epoch):
        loader.set_epoch(epoch)
        return torch.cat([batch[0] for batch in loader])

    run = DatasetLoader(Squares(30), batch_size=8, shuffle=True, seed=3)
    uninterrupted = [epoch_indices(run, epoch) for epoch in range(3)]
    resumed = DatasetLoader(Squares(30), batch_size=8, shuffle=True, seed=3)
    assert torch.equal(epoch_indices(resumed, 2), uninterrupted[2])
    assert not torch.equal(uninterrupted[0], uninterrupted[1])
    assert sorted(uninterrupted[1].tolist()) == list(range(30))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterating_leaves_the_global_generators_alone(num_workers):
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    loader = DatasetLoader(Noisy(), batch_size=4, shuffle=True, num_workers=num_workers)
    assert len(list(loader)) == 3
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_random_augmentation_is_reproducible_per_epoch_and_worker_count():
    def noise(num_workers, epoch=0):
        loader = DatasetLoader(Noisy(), batch_size=3, seed=7, num_workers=num_workers)
        loader.set_epoch(epoch)
        return torch.cat([batch[1] for batch in loader])

    torch.manual_seed(123)  # the global generators play no part
    two_workers = noise(2)
    torch.manual_seed(456)
    assert torch.equal(noise(2), two_workers)
    assert not torch.equal(noise(2, epoch=1), two_workers)
    # Worker 1's first batch is not a copy of worker 0's.
    assert not torch.equal(two_workers[:3], two_workers[3:6])
    # The main process reads as one worker would.
    assert torch.equal(noise(0), noise(1))


def test_transform_gets_the_batch_in_the_main_process():
    loader = DatasetLoader(Squares(6), batch_size=4, transform=lambda x, y: (x, y + 100))
    assert [b[1].tolist() for b in loader] == [[100, 101, 104, 109], [116, 125]]

    class Named(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, index):
            return {"x": torch.tensor(index)}

    seen = []
    loader = DatasetLoader(Named(), batch_size=5, transform=lambda batch: seen.append(batch))
    list(loader)
    assert seen[0]["x"].tolist() == [0, 1, 2, 3, 4]


def test_spawned_workers_read_a_picklable_dataset():
    x = torch.arange(10.0)
    loader = DatasetLoader(TensorDataset(x, -x), batch_size=4, shuffle=True, num_workers=1,
                           multiprocessing_context="spawn")
    same_batches(loader, TensorLoader(x, -x, batch_size=4, shuffle=True))


def test_pin_memory_defaults_to_cuda_availability():
    assert DatasetLoader(Squares(2), batch_size=1).pin_memory == torch.cuda.is_available()
    assert DatasetLoader(Squares(2), batch_size=1, pin_memory=False).pin_memory is False


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(3))


class NoLength:
    def __getitem__(self, index):
        return index


@pytest.mark.parametrize(
    ("dataset", "options", "message"),
    [(Squares(3), {"batch_size": 0}, "batch size must be a positive integer, got 0"),
     (Squares(3), {"batch_size": True}, "batch size must be a positive integer"),
     (Squares(3), {"batch_size": 2, "num_workers": -1}, "num_workers must be an integer >= 0"),
     (Squares(3), {"batch_size": 2, "prefetch_factor": 4}, "prefetch_factor needs worker"),
     (Stream(), {"batch_size": 2}, "map-style dataset with __len__; Stream has no length"),
     (NoLength(), {"batch_size": 2}, "NoLength has no length")],
)
def test_bad_arguments_are_named(dataset, options, message):
    with pytest.raises(DivekitError, match=message):
        DatasetLoader(dataset, **options)


def test_bad_rank():
    with pytest.raises(DivekitError, match="rank must be in"):
        DatasetLoader(Squares(3), batch_size=1).shard(3, 2)
