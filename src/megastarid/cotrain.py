"""``python -m megastarid.cotrain``: train on stars and wildlife at once, each batch mixing the two.

``--star-batch-ratio`` of every batch comes from star_dataset, the rest from WildlifeReID-10k; an epoch is
one pass over the star images. The best checkpoint is chosen by star mAP, as in fine-tuning.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from megastarid.core.console import run_main
from megastarid.training.config import CotrainConfig, parse_train_config
from megastarid.training.strategies import run_cotrain


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_train_config(CotrainConfig, argv, "megastarid cotrain", __doc__.splitlines()[0])
    return run_cotrain(cfg)


if __name__ == "__main__":
    sys.exit(run_main(main))
