"""Training: option dataclasses, losses, tasks and the one Lightning Fabric trainer."""
