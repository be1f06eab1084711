"""Training: option dataclasses, models, losses, tasks and the one Lightning Fabric trainer."""
