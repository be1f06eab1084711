"""Evaluation engine: per-query ranks, CMC@K and mAP, embeddings, re-ranking and report files."""
