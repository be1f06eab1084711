"""The torch device a command runs on (``--device``)."""

from __future__ import annotations

import torch

from megastarid.core.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``--device``: auto (the first GPU when there is one), cpu, cuda, cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a torch device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device
