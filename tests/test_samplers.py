"""P x K and mixed batch samplers: composition, replacement, DDP split, coverage and determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from megastarid.core.errors import UserError
from megastarid.data.samplers import MixedPKBatchSampler, PKBatchSampler


def uneven_labels(identities: int = 60, seed: int = 0) -> np.ndarray:
    """Identity sizes from 1 to 12 images, shuffled in dataset order."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(identities), rng.integers(1, 13, identities))
    return rng.permutation(labels)


def rank_batches(
    labels, p: int, k: int, world_size: int, epoch: int = 0, seed: int = 0
) -> list[list[list[int]]]:
    batches = []
    for rank in range(world_size):
        sampler = PKBatchSampler(labels, p, k, seed=seed, rank=rank, world_size=world_size)
        sampler.set_epoch(epoch)
        batches.append(list(sampler))
        assert len(batches[-1]) == len(sampler)
    return batches


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_batches_are_p_identities_times_k_images(world_size: int) -> None:
    labels = uneven_labels()
    sizes = Counter(labels.tolist())
    for batches in rank_batches(labels, p=4, k=3, world_size=world_size):
        for batch in batches:
            per_identity = Counter(labels[batch].tolist())
            assert len(batch) == 12 and len(per_identity) == 4
            assert set(per_identity.values()) == {3}
            for identity in per_identity:
                images = [i for i in batch if labels[i] == identity]
                # repeats only for identities that have fewer than K images
                assert len(set(images)) == min(3, sizes[identity])


def test_ranks_get_equal_batches_with_disjoint_identities_each_step() -> None:
    labels = uneven_labels()
    batches = rank_batches(labels, p=4, k=2, world_size=3)
    assert len({len(b) for b in batches}) == 1
    for step in zip(*batches, strict=True):
        seen = [set(labels[batch].tolist()) for batch in step]
        assert len(set().union(*seen)) == sum(map(len, seen))


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_epoch_is_split_across_ranks_without_duplicates(world_size: int) -> None:
    # 32 identities x 8 images, K=4: every image fits in exactly one chunk and all chunks fit in the steps.
    labels = np.repeat(np.arange(32), 8)
    batches = rank_batches(labels, p=16 // world_size, k=4, world_size=world_size)
    used = [i for rank in batches for batch in rank for i in batch]
    assert len(batches[0]) == 64 // 16  # 64 chunks, 16 identities per global step
    assert sorted(used) == list(range(len(labels)))


def test_uneven_epoch_covers_nearly_every_image_once() -> None:
    labels = uneven_labels(identities=120, seed=1)
    batches = rank_batches(labels, p=4, k=4, world_size=2)
    used = [i for rank in batches for batch in rank for i in batch]
    # about one pass: as many slots as chunks of K allow, nearly every image present
    assert len(set(used)) >= 0.95 * len(labels)
    assert len(used) <= len(labels) + 3 * len(set(labels.tolist()))


def test_single_image_identities_are_usable() -> None:
    labels = np.arange(10)  # every identity has one photo
    sampler = PKBatchSampler(labels, p=5, k=2)
    batches = list(sampler)
    assert len(batches) == 2
    for batch in batches:
        assert batch[0::2] == batch[1::2]  # each identity's only image, twice
    assert sorted(i for batch in batches for i in batch[0::2]) == list(range(10))


def test_dominant_identity_never_doubles_up_in_a_batch() -> None:
    # 40 photos of one star, 4 of three others: 13 chunks, 6 steps of 2; the three small identities must
    # be repeated once their chunk is used, but a batch never holds the same identity twice.
    labels = np.repeat([0, 1, 2, 3], [40, 4, 4, 4])
    batches = list(PKBatchSampler(labels, p=2, k=4, seed=2))
    assert len(batches) == 6
    for batch in batches:
        assert len(set(labels[batch].tolist())) == 2
        assert len(set(batch)) == 8


def test_same_seed_and_epoch_repeat_other_epoch_or_seed_differ() -> None:
    labels = uneven_labels()
    first = rank_batches(labels, 4, 2, world_size=2, epoch=1, seed=5)
    assert first == rank_batches(labels, 4, 2, world_size=2, epoch=1, seed=5)
    assert first != rank_batches(labels, 4, 2, world_size=2, epoch=2, seed=5)
    assert first != rank_batches(labels, 4, 2, world_size=2, epoch=1, seed=6)


def test_string_labels_and_dataloader_integration() -> None:
    labels = [f"site/star{i % 6}" for i in range(36)]
    dataset = TensorDataset(torch.arange(36))
    loader = DataLoader(dataset, batch_sampler=PKBatchSampler(labels, p=3, k=2))
    for (items,) in loader:
        assert items.shape == (6,)
        assert len({labels[i] for i in items.tolist()}) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "--num-instances"),
        ({"p": 0}, "P"),
        ({"p": 8, "world_size": 2}, "at least 16 identities"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_bad_pk_arguments_are_one_line_user_errors(kwargs: dict, message: str) -> None:
    args = {"labels": np.repeat(np.arange(10), 3), "p": 2, "k": 2} | kwargs
    with pytest.raises(UserError, match=message):
        PKBatchSampler(**args)


def mixed(world_size: int = 1, rank: int = 0, ratio: float = 0.25, **kwargs) -> MixedPKBatchSampler:
    star = np.repeat(np.arange(20), 8)  # 160 star images
    wildlife = np.repeat(np.arange(75), 4)  # 300 wildlife images, labels overlap the star ones on purpose
    return MixedPKBatchSampler(star, wildlife, 16, ratio, 4, rank=rank, world_size=world_size, **kwargs)


@pytest.mark.parametrize("ratio, star_images", [(0.25, 4), (0.5, 8), (0.7, 12), (0.01, 4), (0.99, 12)])
def test_mixed_batches_follow_the_star_ratio(ratio: float, star_images: int) -> None:
    sampler = mixed(ratio=ratio)
    for batch in sampler:
        star = [i for i in batch if i < 160]
        wildlife = [i - 160 for i in batch if i >= 160]
        assert len(star) == star_images and len(wildlife) == 16 - star_images
        assert batch[:star_images] == star
        for part, size in ((star, 8), (wildlife, 4)):
            assert set(Counter(i // size for i in part).values()) == {4}


def test_mixed_indices_address_the_concat_dataset() -> None:
    star_ds, wildlife_ds = TensorDataset(torch.zeros(160)), TensorDataset(torch.ones(300))
    loader = DataLoader(ConcatDataset([star_ds, wildlife_ds]), batch_sampler=mixed(ratio=0.5))
    (values,) = next(iter(loader))
    assert values.tolist() == [0.0] * 8 + [1.0] * 8


def test_mixed_epoch_is_one_pass_over_stars_and_wildlife_streams_on() -> None:
    sampler = mixed(ratio=0.5)  # 8 star + 8 wildlife per batch
    assert len(sampler) == 160 // 8
    seen_wildlife: list[int] = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b if i < 160) == list(range(160))
        seen_wildlife += [i for b in batches for i in b if i >= 160]
    # 2 epochs x 20 steps x 8 = 320 wildlife slots; one wildlife epoch is 37 steps (296 images, one
    # chunk of 4 left over), so the stream runs 296 distinct images before its next epoch starts.
    assert len(set(seen_wildlife[:296])) == 296
    assert set(seen_wildlife[296:]) <= set(range(160, 460))
    assert len(set(seen_wildlife[296:])) == 24


def test_mixed_is_ddp_aware_and_deterministic() -> None:
    per_rank = [list(mixed(world_size=2, rank=r)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 160 // 4 // 2
    for a, b in zip(*per_rank, strict=True):
        star_a, star_b = {i // 8 for i in a if i < 160}, {i // 8 for i in b if i < 160}
        wild_a, wild_b = {(i - 160) // 4 for i in a if i >= 160}, {(i - 160) // 4 for i in b if i >= 160}
        assert not star_a & star_b and not wild_a & wild_b
    assert per_rank[0] == list(mixed(world_size=2, rank=0))
    other = mixed(world_size=2, rank=0)
    other.set_epoch(1)
    assert list(other) != per_rank[0]


@pytest.mark.parametrize(
    "batch_size, ratio, k, message",
    [
        (30, 0.3, 4, "--batch-size"),
        (4, 0.3, 4, "--batch-size"),
        (32, 0.0, 4, "--star-batch-ratio"),
        (32, 1.0, 4, "--star-batch-ratio"),
        (32, 0.3, 0, "--num-instances"),
    ],
)
def test_bad_mixed_arguments_are_one_line_user_errors(
    batch_size: int, ratio: float, k: int, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        MixedPKBatchSampler(np.arange(40) % 10, np.arange(40) % 10, batch_size, ratio, k)
