"""The embedding model and its checkpoints: normalised output, the head options (GeM, multi-scale), local
weights, offline, safe loading."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from megastarid.core.errors import UserError
from megastarid.models.checkpoints import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from megastarid.models.network import GeM, build_model

BACKBONE = "test_resnet"


def test_embeddings_are_l2_normalised_with_the_asked_size() -> None:
    model = build_model(BACKBONE, embedding_dim=32).eval()
    with torch.no_grad():
        emb = model(torch.randn(3, 3, 64, 64))
    assert emb.shape == (3, 32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not model.bn.bias.requires_grad  # BNNeck: frozen bias


@pytest.mark.parametrize("backbone", ["resnet18", "test_convnext", "test_vit", "mobilenetv3_small_050"])
def test_other_backbone_families_work(backbone: str) -> None:
    model = build_model(backbone, embedding_dim=16).eval()
    size = 32 if backbone == "test_vit" else 64
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 16)


@pytest.mark.parametrize(
    "backbone", ["resnet18", "test_convnext", "test_vit", "mobilenetv3_small_050", "test_mambaout"]
)
def test_every_head_works_on_other_backbone_families(backbone: str) -> None:
    """test_vit's stages come from its tokens, test_mambaout's are channels-last: each is pooled right."""
    size = 32 if backbone == "test_vit" else 64
    for pooling, multiscale in (("gem", False), ("avg", True), ("gem", True)):
        model = build_model(backbone, embedding_dim=16, pooling=pooling, multiscale=multiscale)
        emb = model(torch.randn(2, 3, size, size))
        assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
        emb.sum().backward()
        assert all(p.grad is not None for p in model.head_parameters() if p.dim() == 2)  # every projection


def test_gem_is_the_mean_at_p_1_nears_the_max_as_p_grows_and_pools_in_float32() -> None:
    maps = torch.rand(2, 4, 3, 5) + 0.1
    gem = GeM()
    assert gem.p.item() == 3.0
    with torch.no_grad():
        gem.p.fill_(1.0)
        torch.testing.assert_close(gem(maps), maps.mean((2, 3)))
        gem.p.fill_(64.0)
        assert (gem(maps) - maps.amax((2, 3))).abs().max() < 0.05
        gem.p.fill_(3.0)
        half = gem(torch.full((1, 2, 2, 2), 100.0, dtype=torch.float16))  # 100^3 overflows float16
        torch.testing.assert_close(half, torch.full((1, 2), 100.0))


def test_local_backbone_weights_are_loaded(tmp_path: Path) -> None:
    source = build_model(BACKBONE)
    weights = tmp_path / "backbone.pth"
    torch.save(source.backbone.state_dict(), weights)
    model = build_model(BACKBONE, backbone_weights=weights)
    for name, tensor in source.backbone.state_dict().items():
        assert torch.equal(tensor, model.backbone.state_dict()[name]), name


def test_backbone_weights_that_do_not_fit_are_a_one_line_error(tmp_path: Path) -> None:
    weights = tmp_path / "other.pth"
    torch.save(build_model("resnet18").backbone.state_dict(), weights)
    with pytest.raises(UserError, match="does not fit test_resnet"):
        build_model(BACKBONE, backbone_weights=weights)
    with pytest.raises(UserError, match="is not a file"):
        build_model(BACKBONE, backbone_weights=tmp_path / "missing.pth")


@pytest.mark.parametrize("backbone", ["resnet18", "hf-hub:BVRA/MegaDescriptor-T-224"])
def test_offline_pretrained_fails_at_once_saying_how_to_pass_weights(backbone: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(UserError, match="--backbone-weights FILE") as err:
        build_model(backbone, pretrained=True)
    assert time.perf_counter() - started < 10
    assert "\n" not in str(err.value)


def test_unknown_backbone_is_a_one_line_error() -> None:
    with pytest.raises(UserError, match="not a timm model name"):
        build_model("no_such_net_v9")


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path: Path) -> None:
    model = build_model(BACKBONE, embedding_dim=24).eval()
    config = {"backbone": BACKBONE, "embedding_dim": 24, "image_size": 64, "output_dir": str(tmp_path)}
    path = tmp_path / "best.pth"
    rng = torch.get_rng_state()
    save_checkpoint(path, model, config, epoch=3, rng=rng, history=[{"epoch": 1, "loss": 0.5}])
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)  # never unpickles code
    assert raw["epoch"] == 3 and torch.equal(raw["rng"], rng)
    loaded, saved_config = load_model_from_checkpoint(path)
    assert saved_config == config
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_unreadable_checkpoints_are_one_line_errors(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pth"
    save_checkpoint(truncated, build_model(BACKBONE), {"backbone": BACKBONE, "embedding_dim": 512})
    truncated.write_bytes(truncated.read_bytes()[:100])
    other = tmp_path / "other.pth"
    torch.save({"state": torch.zeros(1)}, other)
    for path, message in (
        (truncated, "cannot be read"),
        (other, "not a MegaStarID checkpoint"),
        (tmp_path / "missing.pth", "does not exist"),
    ):
        with pytest.raises(UserError, match=message):
            load_checkpoint(path)


def test_a_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "config": {}, "payload": Path("/etc/passwd")}, path)
    with pytest.raises(UserError, match=r"holds code or objects .* not loaded, for safety") as refused:
        load_checkpoint(path)
    assert "weights_only=False" not in str(refused.value)  # torch's advice to run the code is not relayed
