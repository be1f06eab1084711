"""``python -m megastarid.finetune [--checkpoint PATH]``: train on star_dataset (no checkpoint: star-only).

The best checkpoint is chosen by star mAP on the temporal query/gallery split; at the end the run folder
gets the star_* evaluation reports of that checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from megastarid.core.console import run_main
from megastarid.training.config import FinetuneConfig, parse_train_config
from megastarid.training.strategies import run_finetune


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_train_config(FinetuneConfig, argv, "megastarid finetune", __doc__.splitlines()[0])
    return run_finetune(cfg)


if __name__ == "__main__":
    sys.exit(run_main(main))
