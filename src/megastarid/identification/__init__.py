"""Identification: the catalogue of known individuals (one SQLite file) and naming the animals in new photos.

Layer (DESIGN §4): below training, above evaluation. Nothing here builds a model: commands hand in an
``Embedder`` (a model with its fingerprint), so a catalogue can hold a trained checkpoint's embeddings or a
bare backbone's (zero-shot) alike.
"""
