"""Identification: the catalogue of known individuals (one SQLite file) and naming the animals in new photos.

Layer (DESIGN §4): beside training (neither imports the other), above models. A catalogue holds a trained
checkpoint's embeddings or a bare backbone's (zero-shot) alike, made by ``models.embedder``;
``catalogue_model`` re-creates the one a catalogue was built with.
"""
