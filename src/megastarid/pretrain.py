"""``python -m megastarid.pretrain``: pre-train the embedding model on WildlifeReID-10k (or a synthetic one).

The sea star slice is left out by default so it never leaks into star evaluation; the best checkpoint is
chosen by mAP on the official test split (queries) against the train split (gallery).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from megastarid.core.console import run_main
from megastarid.training.config import PretrainConfig, parse_train_config
from megastarid.training.strategies import run_pretrain


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_train_config(PretrainConfig, argv, "megastarid pretrain", __doc__.splitlines()[0])
    return run_pretrain(cfg)


if __name__ == "__main__":
    sys.exit(run_main(main))
