"""Identification: the catalogue of known individuals (one SQLite file) and naming the animals in new photos.

Layer (DESIGN §4): beside training (neither imports the other), above models. A catalogue holds a trained
checkpoint's embeddings or a bare backbone's (zero-shot) alike, made by ``models.embedder``;
``catalogue_model`` re-creates the one a catalogue was built with.

The catalogue file: ``store_schema`` (its format), ``store_open`` (opening, creating, migrating), ``store``
(its queries), ``store_index`` (read for search). Lineup decisions go back into it by ``decisions_file``
(reading a file), ``decisions_plan`` (what each row does, ``incoming`` placing photos from elsewhere as
copies under the root) and ``decisions_apply``; ``decisions_log`` lists them. ``names`` is the rule every
individual's name keeps, wherever it enters; ``paths`` how photo paths are stored and named.
"""
