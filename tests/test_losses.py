"""The circle + triplet (+ ArcFace) objective: library losses, weights, a weight of 0 switching a loss off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import CosineSimilarity

from megastarid.training.losses import ReIDLoss, SubCenterArcFace


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return F.normalize(torch.randn(16, 8), dim=1), torch.arange(4).repeat_interleave(4)


def test_total_is_the_weighted_sum_of_the_library_losses(batch) -> None:
    emb, labels = batch
    total, parts = ReIDLoss(0.7, 0.3)(emb, labels)
    circle = losses.CircleLoss(m=0.25, gamma=64)(emb, labels)
    cos = CosineSimilarity()
    triplets = miners.BatchHardMiner(distance=cos)(emb, labels)
    triplet = losses.TripletMarginLoss(margin=0.3, distance=cos)(emb, labels, triplets)
    assert torch.allclose(parts["circle_loss"], circle)
    assert torch.allclose(parts["triplet_loss"], triplet)
    assert torch.allclose(total, 0.7 * circle + 0.3 * triplet)


def test_zero_weight_skips_the_loss(batch) -> None:
    emb, labels = batch
    circle_only = ReIDLoss(1.0, 0.0)
    assert circle_only.triplet is None and circle_only.miner is None
    assert set(circle_only(emb, labels)[1]) == {"circle_loss"}
    triplet_only = ReIDLoss(0.0, 1.0)
    assert triplet_only.circle is None
    assert set(triplet_only(emb, labels)[1]) == {"triplet_loss"}


def test_loss_is_lower_for_well_separated_identities(batch) -> None:
    _, labels = batch
    centres = F.normalize(torch.eye(8)[:4], dim=1)
    tight = F.normalize(centres[labels] + 0.01 * torch.randn(16, 8), dim=1)
    random = F.normalize(torch.randn(16, 8), dim=1)
    loss = ReIDLoss()
    assert loss(tight, labels)[0] < loss(random, labels)[0]


def test_gradients_flow(batch) -> None:
    emb, labels = batch
    emb = emb.clone().requires_grad_(True)
    ReIDLoss()(emb, labels)[0].backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_arcface_adds_its_weighted_library_loss_over_the_same_centres(batch) -> None:
    emb, labels = batch
    arcface = SubCenterArcFace(num_classes=4, embedding_dim=8, sub_centers=2)
    total, parts = ReIDLoss(0.7, 0.3, arcface=arcface, arcface_weight=0.5)(emb, labels)
    library = losses.SubCenterArcFaceLoss(num_classes=4, embedding_size=8, sub_centers=2)
    library.W.data.copy_(arcface.centres.data)
    assert torch.allclose(parts["arcface_loss"], library(emb, labels))
    expected = 0.7 * parts["circle_loss"] + 0.3 * parts["triplet_loss"] + 0.5 * parts["arcface_loss"]
    assert torch.allclose(total, expected)
    assert ReIDLoss(arcface=arcface, arcface_weight=0.0).arcface is None  # weight 0: not computed
    assert "arcface_loss" not in ReIDLoss(arcface=arcface, arcface_weight=0.0)(emb, labels)[1]


def test_arcface_runs_in_float32_under_autocast(batch) -> None:
    emb, labels = batch
    arcface = SubCenterArcFace(num_classes=4, embedding_dim=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = arcface(emb.bfloat16(), labels)
    assert loss.item() == pytest.approx(arcface(emb.bfloat16().float(), labels).item(), rel=1e-6)
    loss.backward()
    assert arcface.centres.grad is not None and arcface.centres.grad.abs().sum() > 0
