"""Models (DESIGN §4): building the embedding model, its checkpoints (safe load/save), zero-shot backbones and
the embedder that turns photos into embeddings. Training and identification both stand on this layer and
never import each other.

- ``network``: ``build_model`` (timm backbone + GeM/multiscale head + BNNeck) -> ``EmbeddingModel``.
- ``checkpoints``: ``save_checkpoint``, ``load_checkpoint`` (weights only), ``load_model_from_checkpoint``.
- ``embedder``: ``Embedder`` with its ``ModelFingerprint``; ``checkpoint_embedder``, ``backbone_embedder``.
- ``device``: ``resolve_device`` for ``--device``.
"""
