"""The data layer: readers build one catalogue table, the split marks gallery/query, datasets decode images.

Modules are imported directly (``from megastarid.data.sources import load_star_catalogue``) so that
reading a CSV never pays for importing torch.
"""
