"""The embedding model: a timm backbone + BNNeck head (checkpoints: ``models.checkpoints``).

The head is the backbone's own pooling by default; ``pooling="gem"`` and ``multiscale`` pool the feature
maps of timm's feature extraction instead (``features_only``), so they work on any timm backbone that has it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast, get_args

import timm
import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.layers.format import get_spatial_dim
from timm.models import FeatureInfo
from torch import nn

from megastarid.core.errors import UserError

log = logging.getLogger(__name__)

HUB_HOST = ("huggingface.co", 443)
#: the timm backbone a run uses unless told otherwise
DEFAULT_BACKBONE = "convnext_tiny"

#: how the head pools backbone features: avg (the backbone's own pooling) or gem (generalized mean)
Pooling = Literal["avg", "gem"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
#: the pooling a new run trains with: gem raised test mAP beyond two standard deviations in
#: bench/README.md's ablation (``build_model``'s own default stays avg, what older checkpoints hold)
DEFAULT_POOLING: Pooling = "gem"
#: the backbone stages ``multiscale`` fuses: the last three
MULTISCALE_STAGES = (-3, -2, -1)


class GeM(nn.Module):
    """Generalized mean pooling, ``(mean x^p)^(1/p)`` over the spatial positions, with a learnable exponent
    (Radenović et al., 2018): p = 1 is average pooling and a large p approaches max pooling, so training
    chooses how much a few strong responses (a distinctive arm pattern) outweigh the rest.

    Inputs are clamped at ``eps`` (x^p needs x > 0) and pooled in float32, as x^3 of large activations
    overflows half precision.
    """

    def __init__(self, dims: tuple[int, ...] = (2, 3), p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), p))
        self.dims = dims
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p = self.p.float()
        return features.float().clamp(min=self.eps).pow(p).mean(self.dims).pow(1.0 / p)


class FeatureMapNeck(nn.Module):
    """Feature maps of one or more backbone stages -> each pooled (avg or GeM) and linearly projected to the
    embedding size -> summed.

    The fusion is a sum of the projections: that is exactly one linear layer over the concatenated pooled
    features, without a second linear layer over concatenated projections, which would add an
    embedding_dim x 3·embedding_dim matrix but no expressiveness (a product of linear maps is linear); the
    BNNeck after it rescales whatever the stages contribute.
    """

    def __init__(
        self, channels: Sequence[int], embedding_dim: int, pooling: Pooling, input_fmt: str = "NCHW"
    ) -> None:
        super().__init__()
        dims = get_spatial_dim(input_fmt)
        self.pools = nn.ModuleList(
            GeM(dims)
            if pooling == "gem"
            else SelectAdaptivePool2d(pool_type="avg", flatten=True, input_fmt=input_fmt)
            for _ in channels
        )
        projections = [nn.Linear(c, embedding_dim, bias=False) for c in channels]
        for projection in projections:
            nn.init.kaiming_normal_(projection.weight, mode="fan_out")
        self.projections = nn.ModuleList(projections)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = [proj(pool(x)) for pool, proj, x in zip(self.pools, self.projections, maps, strict=True)]
        return torch.stack(fused).sum(0)


class EmbeddingModel(nn.Module):
    """Backbone -> pooled features -> linear (``neck``) -> BatchNorm (BNNeck) -> L2-normalised embedding.

    ``neck`` is a linear layer over the backbone's own pooled features, or a ``FeatureMapNeck`` over the
    feature maps of a ``features_only`` backbone (GeM, multi-scale). The BNNeck's bias is frozen (as in
    Luo et al., "Bag of Tricks") so the normalised embedding lives on a sphere centred on the origin, which
    is what cosine losses and retrieval assume.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, embedding_dim: int = 512) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bn = nn.BatchNorm1d(embedding_dim)
        self.bn.bias.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return F.normalize(self.bn(self.neck(features)).float(), dim=1)

    def head_parameters(self) -> list[nn.Parameter]:
        """The neck (projections, GeM exponents) and the BNNeck: they train at the head learning rate."""
        return [p for p in (*self.neck.parameters(), *self.bn.parameters()) if p.requires_grad]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe so an offline machine fails in seconds instead of waiting on HTTP retries."""
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
    except OSError:
        return False
    return True


def _offline_hint(backbone: str) -> str:
    if backbone.startswith("hf-hub:"):
        return (
            f"--backbone {backbone} needs the Hugging Face hub (or its local cache); offline, use the timm "
            "architecture name with local weights, e.g. --backbone swin_tiny_patch4_window7_224 "
            "--backbone-weights FILE"
        )
    return (
        f"--pretrained {backbone}: weights not available offline; pass local weights with "
        "--backbone-weights FILE (or use --no-pretrained)"
    )


def build_model(
    backbone: str = DEFAULT_BACKBONE,
    embedding_dim: int = 512,
    pretrained: bool = False,
    backbone_weights: str | Path | None = None,
    pooling: Pooling = "avg",
    multiscale: bool = False,
) -> EmbeddingModel:
    """Create the backbone by timm name with its classifier removed, and put the embedding head on top.

    By default the head is a linear layer over the backbone's own pooled features (what checkpoints without
    a ``pooling`` entry hold). ``pooling="gem"`` or ``multiscale`` take the feature maps of timm's feature
    extraction instead: the last stage's, or with ``multiscale`` the last three stages', each pooled and
    projected (``FeatureMapNeck``); a backbone without feature extraction is a one-line error.

    ``backbone_weights`` loads a local file through timm's ``pretrained_cfg_overlay`` (works offline);
    ``pretrained`` fetches the published weights. Offline (no network, or ``HF_HUB_OFFLINE=1``) without a
    cached copy, the user gets one line saying how to pass local weights.
    """
    feature_maps = pooling != "avg" or multiscale
    kwargs: dict[str, Any] = {"num_classes": 0}
    if feature_maps:
        kwargs = {"features_only": True, "out_indices": MULTISCALE_STAGES if multiscale else (-1,)}
    if backbone_weights is not None:
        path = Path(backbone_weights)
        if not path.is_file():
            raise UserError(f"--backbone-weights: {path} is not a file")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    elif pretrained or backbone.startswith("hf-hub:"):
        import huggingface_hub.constants as hub

        if not hub.HF_HUB_OFFLINE and not _hub_reachable():
            # Use the local cache only: fails at once when the weights are not there.
            hub.HF_HUB_OFFLINE = True
        kwargs["pretrained"] = pretrained
    try:
        net = timm.create_model(backbone, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UserError(
                f"--backbone {backbone}: not a timm model name (see timm.list_models())"
            ) from None
        if backbone_weights is not None:
            raise UserError(
                f"--backbone-weights {backbone_weights}: does not fit {backbone} "
                f"({str(err).splitlines()[0][:200]})"
            ) from None
        raise
    except (OSError, ValueError) as err:
        if backbone_weights is not None:
            raise UserError(f"--backbone-weights {backbone_weights}: cannot load it ({err})") from None
        log.debug("weight download failed: %s", err)
        raise UserError(_offline_hint(backbone)) from None
    except (AssertionError, AttributeError, TypeError) as err:
        if not feature_maps:
            raise
        option = "--multiscale" if multiscale else f"--pooling {pooling}"
        raise UserError(
            f"{option}: timm has no feature extraction (features_only) for backbone {backbone} "
            f"({type(err).__name__}); use another backbone or leave out {option}"
        ) from None
    if feature_maps:
        fmt = getattr(net, "output_fmt", "NCHW")  # Swin's stages are channels-last
        # timm's plain attributes: nn.Module's __getattr__ types them as a submodule or tensor
        feature_info = cast(FeatureInfo, net.feature_info)
        neck: nn.Module = FeatureMapNeck(feature_info.channels(), embedding_dim, pooling, fmt)
    else:
        # Models with a conv head after pooling (MobileNetV3, ...) output head_hidden_size, not num_features.
        width = cast(int, getattr(net, "head_hidden_size", None) or net.num_features)
        neck = nn.Linear(width, embedding_dim, bias=False)
        nn.init.kaiming_normal_(neck.weight, mode="fan_out")
    return EmbeddingModel(net, neck, embedding_dim)
