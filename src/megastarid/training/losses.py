"""The training objective: ``circle_weight * circle + triplet_weight * batch-hard cosine triplet``.

Both losses come from pytorch-metric-learning. Under DDP the library's wrappers gather the embeddings of
every rank, so each positive/negative pair across the global batch counts, not only those on one device.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper
from torch import nn

from megastarid.core.runfiles import CIRCLE_LOSS, TRIPLET_LOSS


class ReIDLoss(nn.Module):
    """Weighted circle + triplet loss; a loss whose weight is 0 is not built and never computed.

    ``forward`` returns the weighted total and the unweighted parts (detached) for logging.
    """

    def __init__(
        self,
        circle_weight: float = 0.7,
        triplet_weight: float = 0.3,
        circle_m: float = 0.25,
        circle_gamma: float = 64.0,
        triplet_margin: float = 0.3,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        self.circle_weight = circle_weight
        self.triplet_weight = triplet_weight
        self.circle: nn.Module | None = None
        self.triplet: nn.Module | None = None
        self.miner: nn.Module | None = None
        if circle_weight > 0:
            circle = losses.CircleLoss(m=circle_m, gamma=circle_gamma)
            self.circle = DistributedLossWrapper(circle) if distributed else circle
        if triplet_weight > 0:
            triplet = losses.TripletMarginLoss(margin=triplet_margin, distance=CosineSimilarity())
            miner = miners.BatchHardMiner(distance=CosineSimilarity())
            self.triplet = DistributedLossWrapper(triplet) if distributed else triplet
            self.miner = DistributedMinerWrapper(miner) if distributed else miner

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        embeddings = embeddings.float()
        total = embeddings.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        if self.circle is not None:
            circle = self.circle(embeddings, labels)
            total = total + self.circle_weight * circle
            parts[CIRCLE_LOSS] = circle.detach()
        if self.triplet is not None and self.miner is not None:
            triplets = self.miner(embeddings, labels)
            triplet = self.triplet(embeddings, labels, triplets)
            total = total + self.triplet_weight * triplet
            parts[TRIPLET_LOSS] = triplet.detach()
        return total, parts
