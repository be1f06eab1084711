"""Identity-balanced batch samplers for metric learning: P identities x K images per batch, DDP-aware.

An epoch is about one pass over the images: each identity's shuffled images are cut into chunks of K
(the last chunk topped up from the identity's other images, or with repeats only when it has fewer than
K), and every global step takes W*P chunks of distinct identities, P per rank. All ranks compute the same
global schedule from (seed, epoch) and keep their own slice, so in a step the ranks see different
identities, every rank gets the same number of batches, and no chunk is used twice in an epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from megastarid.core.errors import UserError


def _check_distributed(rank: int, world_size: int, seed: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"sampler rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")


class PKBatchSampler(Sampler[list[int]]):
    """Yield lists of ``p * k`` dataset indices: ``p`` distinct identities with ``k`` images each.

    ``labels[i]`` is the identity of dataset item ``i`` (any hashable values). Identities with fewer
    than ``k`` images (a single one included) are sampled with replacement; others never repeat an
    image inside a batch. ``len(self)`` is the number of batches this rank yields per epoch.
    """

    def __init__(
        self,
        labels: np.ndarray | Sequence,
        p: int,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if k < 1:
            raise UserError(f"--num-instances (K) must be >= 1, got {k}")
        if p < 1:
            raise UserError(f"identities per batch (P) must be >= 1, got {p}")
        _check_distributed(rank, world_size, seed)
        _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        self._members = np.split(order, np.cumsum(counts)[:-1])
        needed = p * world_size
        if len(self._members) < needed:
            raise UserError(
                f"need at least {needed} identities for {p} per batch on {world_size} process(es), "
                f"have {len(self._members)}"
            )
        self.p, self.k, self.seed, self.rank, self.world_size = p, k, seed, rank, world_size
        self.epoch = 0
        self._stream = 0  # lets a caller derive an independent sampler from the same seed
        self._chunks_per_identity = -(-counts // k)
        self._num_batches = int(self._chunks_per_identity.sum()) // needed  # >= 1: one chunk per identity

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose (deterministic) schedule the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch_batches(self.epoch))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for ``epoch``; identical on every call with the same seed and epoch."""
        rng = np.random.default_rng([self.seed, epoch, self._stream])
        chunks = [self._chunk(rng, members) for members in self._members]
        used = np.zeros(len(chunks), dtype=np.int64)
        identities = np.arange(len(chunks))
        per_step = self.p * self.world_size
        batches = []
        for step in range(self._num_batches):
            left = self._chunks_per_identity - used
            picked = self._pick(rng, identities, left, per_step, self._num_batches - step)
            # Every rank builds the whole global step so their generators stay in lockstep.
            rows = [
                chunks[i][used[i]] if left[i] > 0 else self._chunk(rng, self._members[i])[0]  # a repeat
                for i in picked
            ]
            used[picked[left[picked] > 0]] += 1
            batches.append(np.concatenate(rows[self.rank * self.p : (self.rank + 1) * self.p]).tolist())
        return batches

    def _chunk(self, rng: np.random.Generator, members: np.ndarray) -> np.ndarray:
        """Shuffle an identity's images into rows of K; top up the last row without in-row repeats."""
        shuffled = rng.permutation(members)
        short = -len(shuffled) % self.k
        if short:
            if len(shuffled) >= self.k:
                extra = rng.choice(shuffled[: len(shuffled) - (self.k - short)], short, replace=False)
            else:
                extra = rng.choice(shuffled, short, replace=True)
            shuffled = np.concatenate([shuffled, extra])
        return shuffled.reshape(-1, self.k)

    @staticmethod
    def _pick(
        rng: np.random.Generator, identities: np.ndarray, left: np.ndarray, count: int, steps_left: int
    ) -> np.ndarray:
        """Choose ``count`` distinct identities, favouring those with more chunks left.

        Weighted sampling without replacement (Efraimidis-Spirakis keys log(u)/w); identities that
        must appear in every remaining step to be used up come first, so the epoch rarely runs dry.
        """
        keys = np.full(len(identities), -np.inf)
        has_left = left > 0
        keys[has_left] = np.log(rng.random(int(has_left.sum()))) / left[has_left]
        keys[left >= steps_left] += 1e9
        if has_left.sum() < count:  # fill with random identities that have nothing left
            empty = ~has_left
            keys[empty] = -1e9 + rng.random(int(empty.sum()))
        picked = identities[np.argpartition(-keys, count - 1)[:count]]
        return rng.permutation(picked)


class MixedPKBatchSampler(Sampler[list[int]]):
    """Co-training batches: a ``star_ratio`` share of each batch from stars, the rest from wildlife.

    Indices address ``ConcatDataset([star_ds, wildlife_ds])``: wildlife indices are offset by
    ``len(star_labels)``. Each part is P x K with its own identities; the star part takes
    ``k * round(batch_size / k * star_ratio)`` images, at least ``k`` and leaving at least ``k`` for
    wildlife (32, 0.3, 4 -> 8 star + 24 wildlife; see ``star_per_batch``). An epoch is one pass over the
    star images; the wildlife part is a stream that continues across epochs (its own P x K epochs
    back to back), so co-training walks through all wildlife images before repeating any.
    """

    def __init__(
        self,
        star_labels: np.ndarray | Sequence,
        wildlife_labels: np.ndarray | Sequence,
        batch_size: int,
        star_ratio: float,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if k < 1:
            raise UserError(f"--num-instances (K) must be >= 1, got {k}")
        if batch_size < 2 * k or batch_size % k:
            raise UserError(
                f"--batch-size {batch_size} must be a multiple of --num-instances {k} and at least {2 * k}"
            )
        if not 0.0 < star_ratio < 1.0:
            raise UserError(f"--star-batch-ratio must be strictly between 0 and 1, got {star_ratio}")
        slots = batch_size // k
        star_p = min(max(round(slots * star_ratio), 1), slots - 1)
        self.star = PKBatchSampler(star_labels, star_p, k, seed, rank, world_size)
        self.wildlife = PKBatchSampler(wildlife_labels, slots - star_p, k, seed, rank, world_size)
        self.wildlife._stream = 1
        self.offset = len(star_labels)
        self.star_per_batch = star_p * k
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose (deterministic) schedule the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.star)

    def __iter__(self) -> Iterator[list[int]]:
        steps = len(self.star)
        wildlife_epoch, position = divmod(self.epoch * steps, len(self.wildlife))
        wildlife = self.wildlife.epoch_batches(wildlife_epoch)
        for star_batch in self.star.epoch_batches(self.epoch):
            if position == len(wildlife):
                wildlife_epoch, position = wildlife_epoch + 1, 0
                wildlife = self.wildlife.epoch_batches(wildlife_epoch)
            yield star_batch + [i + self.offset for i in wildlife[position]]
            position += 1
