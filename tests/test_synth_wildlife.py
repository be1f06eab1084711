"""The synthetic WildlifeReID-10k look-alike: the real metadata format and an official split to score."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from megastarid.data.sources import load_wildlife_catalogue
from megastarid.data.synth import generate_wildlife

COLUMNS = ["identity", "path", "date", "orientation", "species", "split", "dataset", "cluster_id"]


def test_metadata_has_the_wildlifereid_columns_and_files(synthetic_wildlife: Path) -> None:
    table = pd.read_csv(synthetic_wildlife / "metadata.csv", low_memory=False)
    assert list(table.columns) == COLUMNS
    assert table["path"].str.startswith("images/").all()
    assert all((synthetic_wildlife / p).is_file() for p in table["path"])
    assert (table["identity"].str.split("_").str[0] == table["dataset"]).all()
    assert table["identity"].nunique() == 20
    assert set(table["split"]) == {"train", "test"}
    assert table["date"].isna().any() and table["date"].notna().any()
    assert pd.to_datetime(table["date"].dropna(), format="ISO8601").notna().all()
    assert set(table["orientation"]) <= {"left", "right", "top"}


def test_several_pattern_species_and_a_sea_star_slice(synthetic_wildlife: Path) -> None:
    table = pd.read_csv(synthetic_wildlife / "metadata.csv")
    assert {"whale shark", "zebra", "leopard", "giraffe", "sea star"} <= set(table["species"])
    assert table.loc[table["species"] == "sea star", "dataset"].eq("SeaStarReID2023").all()
    assert table["dataset"].nunique() >= 4


def test_official_split_can_be_scored(synthetic_wildlife: Path) -> None:
    """Test photos are mostly later photos of train identities, so validation has queries to rank."""
    table = pd.read_csv(synthetic_wildlife / "metadata.csv")
    train = set(table.loc[table["split"] == "train", "identity"])
    test = set(table.loc[table["split"] == "test", "identity"])
    assert len(test & train) >= 0.8 * len(test)
    assert (table.groupby("identity").size() >= 2).all()


def test_reader_excludes_the_sea_star_slice_by_default(synthetic_wildlife: Path) -> None:
    catalogue = load_wildlife_catalogue(synthetic_wildlife)
    assert "SeaStarReID2023" not in set(catalogue["dataset"])
    everything = load_wildlife_catalogue(synthetic_wildlife, exclude_datasets=())
    assert "SeaStarReID2023" in set(everything["dataset"])


def test_wildlife_is_deterministic(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    first = files(generate_wildlife(tmp_path / "a", identities=6, seed=3, image_size=40))
    assert first == files(generate_wildlife(tmp_path / "b", identities=6, seed=3, image_size=40))
    other = files(generate_wildlife(tmp_path / "c", identities=6, seed=4, image_size=40))
    assert first["metadata.csv"] != other["metadata.csv"]
