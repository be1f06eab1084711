"""The training objective: ``circle_weight * circle + triplet_weight * batch-hard cosine triplet
+ arcface_weight * sub-center ArcFace``.

All three come from pytorch-metric-learning. Under DDP the library's wrappers gather the embeddings of
every rank for the pair losses, so each positive/negative pair across the global batch counts, not only
those on one device. ArcFace is different: it compares each embedding with learned class centres, so it
needs no gathering (each rank scores its own embeddings), but its centres are parameters whose gradients
must be averaged over the ranks like the model's: the trainer sets it up as a module of its own (Fabric,
hence DDP), never inside ``DistributedLossWrapper``, which would score the gathered batch on every rank
and scale the centres' gradients by the world size.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper
from torch import nn

from megastarid.core.runfiles import ARCFACE_LOSS, CIRCLE_LOSS, TRIPLET_LOSS


class SubCenterArcFace(nn.Module):
    """pytorch-metric-learning's ``SubCenterArcFaceLoss``: ``sub_centers`` learned centres per class
    (labels ``0 .. num_classes - 1``), an additive angular ``margin`` in degrees and a logit ``scale``.

    The loss always runs in float32, with autocast off: its angles come from ``acos`` of cosines near 1,
    which bf16's three significant digits would round away.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        sub_centers: int = 3,
        margin: float = 28.6,
        scale: float = 64.0,
    ) -> None:
        super().__init__()
        self.loss = losses.SubCenterArcFaceLoss(
            num_classes=num_classes,
            embedding_size=embedding_dim,
            margin=margin,
            scale=scale,
            sub_centers=sub_centers,
        )

    @property
    def centres(self) -> nn.Parameter:
        """The class centres, ``embedding_dim x (num_classes * sub_centers)``."""
        return self.loss.W

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.loss(embeddings.float(), labels)


class ReIDLoss(nn.Module):
    """Weighted circle + triplet (+ ArcFace) loss; a loss whose weight is 0 is not built and never computed.

    ``arcface`` is a ``SubCenterArcFace`` (possibly wrapped for DDP by the caller) used when
    ``arcface_weight > 0``. ``forward`` returns the weighted total and the unweighted parts (detached) for
    logging.
    """

    def __init__(
        self,
        circle_weight: float = 0.7,
        triplet_weight: float = 0.3,
        circle_m: float = 0.25,
        circle_gamma: float = 64.0,
        triplet_margin: float = 0.3,
        distributed: bool = False,
        arcface: nn.Module | None = None,
        arcface_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.circle_weight = circle_weight
        self.triplet_weight = triplet_weight
        self.arcface_weight = arcface_weight
        self.circle: nn.Module | None = None
        self.triplet: nn.Module | None = None
        self.miner: nn.Module | None = None
        self.arcface = arcface if arcface_weight > 0 else None
        if arcface_weight > 0 and arcface is None:
            raise ValueError("arcface_weight > 0 needs the ArcFace module")
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
        if self.arcface is not None:
            arcface = self.arcface(embeddings, labels)
            total = total + self.arcface_weight * arcface
            parts[ARCFACE_LOSS] = arcface.detach()
        return total, parts
