"""Training: option dataclasses, losses, tasks and strategies, run folders, and the one Lightning Fabric loop.

The loop (``loop.fit``) is put together from ``distributed`` (devices, DDP, SLURM), ``schedule`` (parameter
groups, warm-up + cosine), ``step`` (``Trainer``: model, optimizer, loss, EMA, one step), ``batches``
(seeded, resumable epochs), ``signals`` (Ctrl-C / SIGTERM save and stop), ``state`` (``RunState``,
``EpochTally``) and ``recorder`` (evaluation, checkpoints, history, early stopping, run summary).
"""
