"""Evaluation engine (DESIGN §3): per-query ranks, CMC@K and mAP, and the report files of DESIGN §2.

- ``metrics``: ``rank_queries`` / ``rank_score_matrix`` -> ``QueryResults``; ``cmc``, ``mean_ap``.
- ``embed``: ``embed_images`` (model -> L2-normalised embeddings, test-time augmentation ``TTA``,
  unreadable files as NaN rows).
- ``embeddings``: ``EmbeddingSet`` and the ``star_embeddings.npz`` format (``save_embeddings``,
  ``load_embeddings`` with one-line errors).
- ``rerank``: k-reciprocal re-ranking for galleries that fit in memory.
- ``reports``: per-query/identity/folder tables, summary dict, plots, ``write_reports``.
- ``star``: ``evaluate_star`` (model + catalogue) and ``evaluate_embeddings`` (saved embeddings).
- ``wildlife``: ``evaluate_wildlife``, overall and per source dataset.
"""
