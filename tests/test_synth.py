"""The built-in synthetic star set: exact tree, dated outings, determinism, no identity in colour alone."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from megastarid.core.errors import UserError
from megastarid.data import synth
from megastarid.data.dates import parse_folder_date
from megastarid.data.sources import load_star_catalogue
from megastarid.data.synth import ensure_synthetic, generate_stars

OUTING_FORMS = {
    "M_D_YYYY_dock_sighting": re.compile(r"^\d{1,2}_\d{1,2}_\d{4}_dock_sighting$"),
    "YYYY-MM-DD": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
    "YYYYMMDD_survey": re.compile(r"^\d{8}_survey$"),
}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_stars(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The default set (30 identities) and the CPU seconds it took to write (wall time varies with load)."""
    started = time.process_time()
    root = generate_stars(tmp_path_factory.mktemp("default") / "stars")
    return root, time.process_time() - started


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    first = _files(generate_stars(tmp_path / "a", identities=2, seed=7, image_size=40))
    again = _files(generate_stars(tmp_path / "b", identities=2, seed=7, image_size=40))
    other = _files(generate_stars(tmp_path / "c", identities=2, seed=8, image_size=40))
    assert first and first == again
    assert set(first.values()).isdisjoint(other.values())


def test_tree_is_dataset_individual_outing_jpg(synthetic_stars: Path) -> None:
    photos = sorted(synthetic_stars.rglob("*"))
    files = [p.relative_to(synthetic_stars) for p in photos if p.is_file()]
    assert files and all(len(f.parts) == 4 and f.suffix == ".jpg" for f in files)
    assert len({f.parts[0] for f in files}) >= 2, "a couple of DATASET sites"
    with Image.open(synthetic_stars / files[0]) as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (96, 96)


def test_outing_folders_are_dated_in_the_real_spellings(default_stars: tuple[Path, float]) -> None:
    root, _ = default_stars
    outings = {p for p in root.glob("*/*/*") if p.is_dir()}
    names = {p.name for p in outings}
    for form, pattern in OUTING_FORMS.items():
        assert any(pattern.match(name) for name in names), f"no outing folder spelt {form}"
    assert all(parse_folder_date(name) is not None for name in names)
    for individual in {p.parent for p in outings}:
        dates = [parse_folder_date(p.name) for p in individual.iterdir()]
        assert len(set(dates)) == len(dates), f"two outings of {individual.name} on one day"


def test_default_set_size_speed_and_outing_mix(default_stars: tuple[Path, float]) -> None:
    root, seconds = default_stars
    catalogue = load_star_catalogue(root)
    assert catalogue["identity"].nunique() == 30
    assert 500 <= len(catalogue) <= 700
    assert seconds < 60
    outings = catalogue.groupby("identity")["folder"].nunique()
    assert (outings == 1).sum() >= 1 and (outings >= 3).sum() >= 10
    photos_per_outing = catalogue.groupby(["identity", "folder"]).size()
    assert photos_per_outing.nunique() >= 3, "photos per outing should vary"
    assert catalogue["date"].notna().all()
    assert set(catalogue["split"]) == {"train", "test"}


def _mean_rgb(paths: pd.Series) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) for p in paths]
    )


def test_global_colour_does_not_identify_individuals(default_stars: tuple[Path, float]) -> None:
    """1-NN on each photo's mean RGB, later outings against earlier ones, stays near chance."""
    catalogue = load_star_catalogue(default_stars[0])
    gallery = catalogue[catalogue["split"] == "train"]
    query = catalogue[(catalogue["split"] == "test") & catalogue["identity"].isin(gallery["identity"])]
    g, q = _mean_rgb(gallery["path"]), _mean_rgb(query["path"])
    nearest = np.argmin(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1), axis=1)
    accuracy = float(np.mean(gallery["identity"].to_numpy()[nearest] == query["identity"].to_numpy()))
    chance = 1 / gallery["identity"].nunique()
    assert accuracy < 4 * chance, f"mean colour finds the individual {accuracy:.0%} of the time"


def test_an_injured_arm_regrows_over_later_outings() -> None:
    rng = np.random.default_rng(0)
    star = next(s for s in (synth.stars.StarIdentity.draw(rng, 5) for _ in range(50)) if s.injury[0] >= 0)
    arm, since = star.injury
    lengths = [star.at_outing(o, np.random.default_rng(o)).lengths[arm] for o in range(5)]
    assert lengths[since] < 0.6 * star.lengths[arm]
    assert lengths[since:] == sorted(lengths[since:])
    assert all(length == star.lengths[arm] for length in lengths[:since])


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "stars"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"not empty.*--overwrite"):
        generate_stars(out, identities=1, image_size=48)
    assert (out / "notes.txt").read_text() == "mine"
    generate_stars(out, identities=1, image_size=48, overwrite=True)
    assert not (out / "notes.txt").exists() and any(out.rglob("*.jpg"))
    assert [p.name for p in tmp_path.iterdir()] == ["stars"], "no staging folder left behind"


@pytest.fixture
def small_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache at a temp folder and shrink the default sets so ``ensure_synthetic`` is quick."""
    monkeypatch.setenv("MEGASTARID_CACHE", str(tmp_path / "cache"))
    for kind, generator in synth.GENERATORS.items():
        monkeypatch.setitem(synth.GENERATORS, kind, replace(generator, identities=2, image_size=40))
    return tmp_path / "cache"


def test_ensure_synthetic_generates_once_and_announces_it(small_defaults: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="megastarid.data.synth"):
        root = ensure_synthetic("stars")
    assert root.parent.parent == small_defaults and root.name.endswith(synth.generator_version())
    assert len(caplog.records) == 1 and str(root) in caplog.records[0].getMessage()
    first = _files(root)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="megastarid.data.synth"):
        assert ensure_synthetic("stars") == root
    assert not caplog.records and _files(root) == first
    assert [p.name for p in root.parent.iterdir()] == [root.name], "no staging folder left behind"


def test_ensure_synthetic_regenerates_for_a_new_generator_version(
    small_defaults: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = ensure_synthetic("wildlife")
    monkeypatch.setattr(synth, "generator_version", lambda: "changed")
    new = ensure_synthetic("wildlife")
    assert new != old and (new / "metadata.csv").is_file()


def test_ensure_synthetic_rejects_an_unknown_kind(small_defaults: Path) -> None:
    with pytest.raises(UserError, match="'cats'"):
        ensure_synthetic("cats")  # type: ignore[arg-type]


def test_an_animal_its_outing_and_its_photo_draw_from_different_streams() -> None:
    draws = {synth.canvas.seeded_rng(*key).random() for key in [(0, 1, 2), (0, 1, 2, 0), (0, 1, 2, 0, 0)]}
    assert len(draws) == 3
    assert synth.canvas.seeded_rng(5, 1).random() == synth.canvas.seeded_rng(5, 1).random()
