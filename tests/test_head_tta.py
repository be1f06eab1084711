"""The embedding head options (--pooling gem, --multiscale) through the real finetune and evaluate commands,
GeM's learnable exponent, and the rotation-aware test-time augmentation (--tta none|flip|rot4|rot4flip) of
evaluate, catalogue build and identify, with catalogues written before the modes (a bool)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models import build_model_with_cfg, register_model
from torch import nn

from megastarid import cli, evaluate, finetune
from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.core.runfiles import STAR_SUMMARY_JSON
from megastarid.data.datasets import ImageDataset
from megastarid.data.readers import read_star_tree
from megastarid.data.transforms import build_eval_transform
from megastarid.evaluation.embed import embed_images
from megastarid.evaluation.openset import Calibration
from megastarid.models.checkpoints import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from megastarid.models.network import build_model
from megastarid.training.config import FinetuneConfig
from megastarid.training.losses import ReIDLoss
from megastarid.training.tasks import resolve_architecture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 64  # resnet18's last stage is then 2 x 2: GeM over one position would be the identity, p idle
TINY = [
    "--image-size", str(SIZE), "--batch-size", "8", "--num-instances", "2", "--workers", "0",
    "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-3", "--eval-batch-size", "32",
]  # fmt: skip
#: the head keys of today's model (backbone pooling + linear + BNNeck): old checkpoints hold exactly these
PLAIN_HEAD = {
    "neck.weight",
    "bn.weight",
    "bn.bias",
    "bn.running_mean",
    "bn.running_var",
    "bn.num_batches_tracked",
}


def run(*argv: object) -> int:
    return cli.main([str(arg) for arg in argv])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# -- the head ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "head"),
    [
        ("resnet18", []),  # the default: gem, one scale
        ("resnet18", ["--pooling", "avg", "--multiscale"]),
        ("resnet18", ["--pooling", "gem", "--multiscale"]),
        ("test_convnext", ["--pooling", "avg", "--multiscale"]),
        ("test_efficientnet", ["--pooling", "gem", "--multiscale"]),
    ],
)
def test_a_head_trains_and_its_checkpoint_evaluates_as_trained(
    backbone: str, head: list[str], synthetic_stars: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    argv = ["--output-dir", run_dir, "--star-root", synthetic_stars, "--backbone", backbone, *TINY, *head]
    assert finetune.main([str(arg) for arg in argv] + ["--val-fraction", "0"]) == 0  # best.pth: the last
    checkpoint = load_checkpoint(run_dir / "best.pth")
    gem, multiscale = "avg" not in head, "--multiscale" in head
    assert checkpoint["config"]["pooling"] == ("gem" if gem else "avg")
    assert checkpoint["config"]["multiscale"] is multiscale
    stages = 3 if multiscale else 1
    weights = checkpoint["model"]
    assert {f"neck.projections.{i}.weight" for i in range(stages)} <= set(weights)
    exponents = [weights[f"neck.pools.{i}.p"] for i in range(stages)] if gem else []
    assert all(float(p) != 3.0 for p in exponents)  # GeM's exponent trained away from its start

    out = tmp_path / "eval"
    code = run_main(evaluate.main, ["--checkpoint", str(run_dir / "best.pth"), "--star-root",
                                    str(synthetic_stars), "--output-dir", str(out)])  # fmt: skip
    assert code == 0
    reloaded = json.loads((out / STAR_SUMMARY_JSON).read_text())
    report = json.loads((run_dir / STAR_SUMMARY_JSON).read_text())  # the run's own report of best.pth
    assert reloaded["mAP"] == pytest.approx(report["mAP"], abs=1e-6)  # the same model, head and all
    assert reloaded["CMC@1"] == pytest.approx(report["CMC@1"], abs=1e-6)


@pytest.mark.slow
def test_a_run_with_a_head_resumes_with_it(synthetic_stars: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = ["--output-dir", run_dir, "--star-root", synthetic_stars, "--backbone", "test_resnet", *TINY]
    assert finetune.main([str(arg) for arg in argv] + ["--pooling", "gem", "--multiscale"]) == 0
    first = load_checkpoint(run_dir / "last.pth")["model"]
    # --resume alone: the head comes from the run's config.yaml, and last.pth's weights must fit it
    assert finetune.main(["--output-dir", str(run_dir), "--resume", "--epochs", "2"]) == 0
    resumed = load_checkpoint(run_dir / "last.pth")
    assert (resumed["config"]["pooling"], resumed["config"]["multiscale"]) == ("gem", True)
    assert resumed["config"]["epochs"] == 2 and set(resumed["model"]) == set(first)
    key = "neck.projections.0.weight"
    assert not torch.equal(resumed["model"][key], first[key])  # it trained on from last.pth


def test_without_head_options_the_model_is_todays_and_old_checkpoints_load(tmp_path: Path) -> None:
    model = build_model("resnet18", embedding_dim=16).eval()
    assert {key for key in model.state_dict() if not key.startswith("backbone.")} == PLAIN_HEAD
    old = tmp_path / "old.pth"  # a checkpoint from before --pooling and --multiscale
    save_checkpoint(old, model, {"backbone": "resnet18", "embedding_dim": 16, "image_size": SIZE})
    loaded, config = load_model_from_checkpoint(old)
    assert "pooling" not in config
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_a_checkpoint_with_an_unknown_head_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    save_checkpoint(path, build_model("test_resnet", 8), {"backbone": "test_resnet", "embedding_dim": 8,
                                                          "image_size": 32, "pooling": "max"})  # fmt: skip
    with pytest.raises(UserError, match=r"head must be pooling avg or gem .* got pooling 'max'") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_finetuning_a_checkpoint_takes_its_pooling_and_needs_its_multiscale(
    synthetic_stars: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert resolve_architecture(FinetuneConfig(star_root=synthetic_stars)).pooling == "gem"  # from scratch
    old = tmp_path / "old" / "best.pth"  # from before --pooling: the backbone's average pooling
    save_checkpoint(old, build_model("test_resnet", 8), {"backbone": "test_resnet", "embedding_dim": 8})
    assert resolve_architecture(FinetuneConfig(star_root=synthetic_stars, checkpoint=old)).pooling == "avg"
    start = tmp_path / "pre" / "best.pth"
    config = {"backbone": "test_resnet", "embedding_dim": 8, "image_size": 32, "pooling": "gem"}
    save_checkpoint(start, build_model("test_resnet", 8, pooling="gem", multiscale=True), config | {
        "multiscale": True})  # fmt: skip
    base = ["--output-dir", tmp_path / "fine", "--star-root", synthetic_stars, "--checkpoint", start]
    for head, error in (
        (["--multiscale", "--pooling", "avg"], "--pooling avg --multiscale differs"),
        ([], "--pooling gem differs from the --checkpoint's head: pass --pooling gem --multiscale"),
    ):
        assert run_main(finetune.main, [str(arg) for arg in base + head]) == 2
        assert error in one_error_line(capsys)
    assert not (tmp_path / "fine").exists()


class _NoFeatures(nn.Module):
    """A timm-registered network without ``feature_info``: timm cannot extract its stages."""

    def __init__(self, num_classes: int = 0, **_: object) -> None:
        super().__init__()
        self.num_classes, self.num_features = num_classes, 8
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


@register_model
def msid_test_no_features(pretrained: bool = False, **kwargs: object) -> nn.Module:
    return build_model_with_cfg(_NoFeatures, "msid_test_no_features", pretrained, **kwargs)


def test_a_backbone_without_feature_extraction_is_one_line(
    synthetic_stars: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert timm.is_model("msid_test_no_features")
    assert build_model("msid_test_no_features", 8)(torch.randn(2, 3, 16, 16)).shape == (2, 8)  # plain: fine
    base = ["--output-dir", str(tmp_path / "run"), "--star-root", str(synthetic_stars), *TINY]
    for head, option in ((["--multiscale"], "--multiscale"), (["--pooling", "gem"], "--pooling gem")):
        assert run_main(finetune.main, [*base, "--backbone", "msid_test_no_features", *head]) == 2
        err = one_error_line(capsys)
        assert f"error: {option}: timm has no feature extraction" in err and "msid_test_no_features" in err
    assert not (tmp_path / "run").exists()


def test_gem_exponent_learns_at_the_head_learning_rate(synthetic_stars: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", embedding_dim=32, pooling="gem", multiscale=True).train()
    exponents = [model.neck.pools[i].p for i in range(3)]
    head = {id(p) for p in model.head_parameters()}
    assert all(id(p) in head for p in exponents)  # the head's learning rate, not the backbone's
    assert all(id(p) in head for p in model.neck.projections.parameters())
    table = read_star_tree(synthetic_stars)
    rows = table.groupby("identity").head(2).head(8)  # 4 individuals x 2 photos: a real P x K batch
    data = ImageDataset(rows["path"].tolist(), [0] * len(rows), build_eval_transform(SIZE), SIZE)
    images = torch.stack([data[i][0] for i in range(len(rows))])
    labels = torch.as_tensor(rows["identity"].factorize()[0])
    criterion = ReIDLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        loss, _ = criterion(model(images), labels)
        loss.backward()
        assert all(p.grad is not None and float(p.grad.abs()) > 0 for p in exponents)
        optimizer.step()
    moved = [abs(float(p.detach()) - 3.0) for p in exponents]
    assert min(moved) > 1e-3  # far more than weight decay alone would move it


# -- test-time augmentation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_views(synthetic_stars: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A star photo cut to 4:3 like a camera's, the same photo turned by 90° and its mirror, as PNG files
    (lossless: a re-encoded JPEG would differ in its pixels, not only in its orientation). A square photo
    would not do: Pillow's two-pass resize rounds the quarter turn of a square image differently (by one grey
    level), a difference in the pixels the model sees, not in the model."""
    folder = tmp_path_factory.mktemp("views")
    source = sorted(synthetic_stars.rglob("*.jpg"))[0]
    with Image.open(source) as image:
        photo = image.convert("RGB").crop((0, 0, 96, 72))
    views = {
        "photo": photo,
        "turned": photo.transpose(Image.Transpose.ROTATE_90),
        "mirror": photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    }
    for name, image in views.items():
        image.save(folder / f"{name}.png")
    return [str(folder / f"{name}.png") for name in views]


@pytest.mark.parametrize(
    ("tta", "same_when_turned", "same_when_mirrored"),
    [("none", False, False), ("flip", False, True), ("rot4", True, False), ("rot4flip", True, True)],
)
def test_rotation_tta_gives_a_turned_photo_the_same_embedding(
    photo_views: list[str], tta: str, same_when_turned: bool, same_when_mirrored: bool
) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", embedding_dim=32)
    photo, turned, mirror = embed_images(model, photo_views, SIZE, "cpu", tta=tta, progress=False)
    np.testing.assert_allclose(np.linalg.norm(photo), 1.0, atol=1e-5)
    assert np.allclose(photo, turned, atol=1e-5) is same_when_turned
    assert np.allclose(photo, mirror, atol=1e-5) is same_when_mirrored
    if same_when_turned:
        assert np.abs(photo - turned).max() < 1e-5  # float error, not a near miss


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "run" / "best.pth"
    save_checkpoint(path, build_model("test_resnet", 8), {"backbone": "test_resnet", "embedding_dim": 8,
                                                          "image_size": 32})  # fmt: skip
    return path


def build_command(checkpoint: Path, stars: Path, catalogue: Path) -> list[object]:
    return ["catalogue", "build", "--checkpoint", checkpoint, "--star-root", stars, "--catalogue", catalogue]


def test_the_three_commands_refuse_an_unknown_tta_in_one_line(
    star_tree: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue = tmp_path / "archive.sqlite"
    commands = [
        ["evaluate", "--checkpoint", checkpoint, "--star-root", star_tree],
        build_command(checkpoint, star_tree, catalogue),
        ["identify", star_tree, "--catalogue", catalogue, "--out", tmp_path / "out"],
    ]
    for command in commands:
        assert run(*command, "--tta", "rot8") == 2, command
        err = one_error_line(capsys)
        assert "--tta: invalid choice 'rot8'" in err and "rot4flip" in err, err
    assert not catalogue.exists()


def test_evaluate_records_the_mode_in_its_report(star_tree: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert run("evaluate", "--checkpoint", checkpoint, "--star-root", star_tree, "--output-dir", out,
               "--tta", "rot4flip") == 0  # fmt: skip
    summary = json.loads((out / STAR_SUMMARY_JSON).read_text())
    assert summary["tta"] == "rot4flip" and summary["options"]["tta"] == "rot4flip"


def catalogue_facts(catalogue: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """(the TTA of ``catalogue info --json``, the model line of ``catalogue info``)."""
    capsys.readouterr()
    assert run("catalogue", "info", "--catalogue", catalogue, "--json") == 0
    tta = json.loads(capsys.readouterr().out)["model"]["fingerprint"]["tta"]
    assert run("catalogue", "info", "--catalogue", catalogue) == 0
    model_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("model"))
    return tta, model_line


def turned_photos(star_tree: Path, out: Path) -> dict[str, str]:
    """New photos: three catalogue photos (64 x 48, as a camera's 4:3) turned by 90° (PNG), by individual."""
    out.mkdir()
    turned = {}
    for path in sorted(star_tree.rglob("img0.jpg"))[:3]:
        identity = f"{path.parts[-4]}/{path.parts[-3]}"
        with Image.open(path) as image:
            image.transpose(Image.Transpose.ROTATE_90).save(out / f"{len(turned)}.png")
        turned[str(out / f"{len(turned)}.png")] = identity
    return turned


def identify_turned(catalogue: Path, turned: dict[str, str], out: Path, *extra: object) -> dict:
    """Identify the turned photos one by one: matches.json."""
    photos = sorted(turned)
    argv = [*photos, "--catalogue", catalogue, "--out", out, "--encounter-by", "none", "--allow-uncalibrated"]
    assert run("identify", *argv, *extra) == 0
    return json.loads((out / "matches.json").read_text())


def test_a_rot4_catalogue_knows_a_turned_photo_and_identify_follows_its_tta(
    star_tree: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue, plain = tmp_path / "rot4.sqlite", tmp_path / "plain.sqlite"
    assert run(*build_command(checkpoint, star_tree, catalogue)) == 0  # auto: rot4 for star photos
    assert run(*build_command(checkpoint, star_tree, plain), "--tta", "none") == 0
    tta, model_line = catalogue_facts(catalogue, capsys)
    assert tta == "rot4" and "TTA rot4" in model_line
    turned = turned_photos(star_tree, tmp_path / "new")

    for extra in ((), ("--tta", "rot4")):  # the catalogue's TTA, by default or named
        matches = identify_turned(catalogue, turned, tmp_path / f"out{len(extra)}", *extra)
        assert matches["catalogue"]["model"]["tta"] == "rot4"
        for query in matches["queries"]:
            top = query["candidates"][0]
            assert top["identity"] == turned[query["photos"][0]["path"]]
            assert top["score"] == pytest.approx(1.0, abs=1e-5)  # its catalogue photo, up to float error
    without = identify_turned(plain, turned, tmp_path / "plain")
    assert all(q["candidates"][0]["score"] < 0.999 for q in without["queries"])  # no TTA: turned is other

    capsys.readouterr()
    argv = [*turned, "--catalogue", catalogue, "--out", tmp_path / "c", "--allow-uncalibrated"]
    assert run("identify", *argv, "--tta", "flip") == 2
    assert "--tta flip: catalogue" in one_error_line(capsys)
    build = build_command(checkpoint, star_tree, catalogue)
    assert run(*build, "--tta", "flip") == 2  # another TTA makes incomparable embeddings
    assert "tta 'rot4' vs 'flip'" in one_error_line(capsys)


@pytest.mark.parametrize(("stored", "mode"), [(True, "flip"), (False, "none")])
def test_a_catalogue_that_stored_a_bool_opens_as_its_mode(
    stored: bool,
    mode: str,
    star_tree: Path,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    catalogue = tmp_path / "archive.sqlite"
    build = build_command(checkpoint, star_tree, catalogue)
    assert run(*build, "--tta", mode) == 0
    with sqlite3.connect(catalogue) as con:  # as the catalogues of earlier versions hold it
        record = json.loads(con.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0])
        record["fingerprint"]["tta"] = stored
        con.execute("UPDATE meta SET value = ? WHERE key = 'model'", (json.dumps(record),))
    tta, model_line = catalogue_facts(catalogue, capsys)
    assert tta == mode and f"TTA {mode}" in model_line
    turned = turned_photos(star_tree, tmp_path / "new")
    assert identify_turned(catalogue, turned, tmp_path / "out")["catalogue"]["model"]["tta"] == mode
    assert run(*build, "--tta", mode) == 0  # the same model: an update, no --rebuild needed
    assert run(*build) == 0  # auto keeps the catalogue's own mode


def test_a_build_embeds_as_its_calibration_was_fitted_or_says_why_not(
    star_tree: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fitted_on = {"side": "validation", "protocol": "time-cut", "tta": "none", "image_size": 32}
    calibration = Calibration("logistic", 0.5, 0.5, coef=10.0, intercept=-5.0, fitted_on=fitted_on)
    (checkpoint.parent / "calibration.json").write_text(json.dumps(calibration.to_dict()))
    catalogue = tmp_path / "archive.sqlite"
    assert run(*build_command(checkpoint, star_tree, catalogue)) == 0
    assert catalogue_facts(catalogue, capsys)[0] == "none"  # auto: the calibration's, not rot4
    for other, option in ((("--tta", "rot4"), "--tta"), (("--image-size", "48"), "--image-size")):
        elsewhere = tmp_path / f"{option}.sqlite"
        assert run(*build_command(checkpoint, star_tree, elsewhere), *other) == 2
        err = one_error_line(capsys)
        theirs = fitted_on[option[2:].replace("-", "_")]
        assert f"fitted on embeddings made with {option} {theirs}, this catalogue's are made with" in err
        assert f"build with {option} {theirs}" in err
        assert not elsewhere.exists()  # refused before anything was written
