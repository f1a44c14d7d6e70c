import copy

import pytest
import timm
import torch

from snftune.backbones import UnsupportedModelError, anatomy, create_model, factory, install_sites
from snftune.backbones.factory import WeightsUnavailableError
from snftune.backbones.sites import SlotTakenError

from conftest import make_tiny


def test_empty_sites_reproduce_timm_exactly(tiny_kind):
    model, size = make_tiny(tiny_kind)
    reference = copy.deepcopy(model).eval()
    x = torch.randn(3, 3, size, size)
    install_sites(model)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_empty_sites_reproduce_timm_gradients(tiny_kind):
    model, size = make_tiny(tiny_kind)
    reference = copy.deepcopy(model).eval()
    install_sites(model)
    model.eval()
    x = torch.randn(2, 3, size, size)
    model(x).square().sum().backward()
    reference(x).square().sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize(
    "kind,family,sites_per_block,blocks",
    [
        ("vit", "vit", 2, 2),
        ("swin", "swin", 2, 5),
        ("resnet-bottleneck", "resnet", 1, 8),
        ("resnet-basic", "resnet", 1, 4),
        ("convnext", "convnext", 1, 4),
        ("eva02", "eva", 2, 2),
        ("beit", "beit", 2, 2),
        ("swinv2", "swinv2", 2, 5),
        ("regnet", "regnet", 1, 5),
    ],
)
def test_anatomy_lists_every_residual(kind, family, sites_per_block, blocks):
    model, _ = make_tiny(kind)
    found = install_sites(model)
    assert found.family == family
    assert len(found.blocks) == blocks
    assert all(len(s) == sites_per_block for s in found.block_sites)
    assert len(found.sites) == blocks * sites_per_block == len(found.site_names)


@pytest.mark.parametrize(
    "name,kwargs,expected",
    [
        ("vit_base_patch16_224", {}, [768] * 24),
        ("swin_base_patch4_window7_224", {}, [128] * 4 + [256] * 4 + [512] * 36 + [1024] * 4),
        ("resnet50", {}, [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3),
    ],
)
def test_site_channels_of_full_size_backbones(name, kwargs, expected):
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    assert [site.channels for site in install_sites(model).sites] == expected


def test_resnet_sites_work_on_channel_dim_1():
    model, _ = make_tiny("resnet-bottleneck")
    assert {site.channel_dim for site in install_sites(model).sites} == {1}


def test_installing_twice_is_a_no_op_and_anatomy_only_reads():
    model, _ = make_tiny("vit")
    with pytest.raises(ValueError, match="install_sites"):
        anatomy(model)
    first = install_sites(model)
    second = install_sites(model)
    assert [id(s) for s in first.sites] == [id(s) for s in second.sites] == [id(s) for s in anatomy(model).sites]


def test_a_filled_slot_is_refused_instead_of_replaced():
    model, _ = make_tiny("vit")
    site = install_sites(model).sites[0]
    flow = torch.nn.Linear(2, 2)
    site.fill("shortcut", flow)
    with pytest.raises(SlotTakenError, match="already taken by Linear"):
        site.fill("shortcut", torch.nn.Linear(2, 2))
    assert site.shortcut is flow
    with pytest.raises(ValueError, match="'shortcut' and 'branch'"):
        site.fill("middle", flow)


def test_vit_token_slots_see_the_sequence_and_copies_stay_wired():
    model, size = make_tiny("vit")
    found = install_sites(model)
    seen = []

    class Record(torch.nn.Module):
        def forward(self, x):
            seen.append(x.shape)
            return x

    found.blocks[0].token_slot = Record()
    model.token_exit.slot = Record()
    model.eval()(torch.randn(2, 3, size, size))
    assert seen == [(2, 17, 192), (2, 17, 192)]
    clone = copy.deepcopy(model)
    clone.token_exit.slot = torch.nn.Identity()
    seen.clear()
    clone(torch.randn(1, 3, size, size))
    assert seen == [(1, 17, 192)]  # only the copied block-0 slot; the copy's exit is its own


def test_unsupported_model_names_the_block_types_found():
    with torch.device("meta"):
        model = timm.create_model("mixer_s16_224", num_classes=3)
    with pytest.raises(UnsupportedModelError, match="MixerBlock"):
        install_sites(model)


def test_create_model_reports_missing_weights_file(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_model("vit_tiny_patch16_224", pretrained=str(tmp_path / "missing.npz"))


def test_create_model_loads_a_local_state_dict_and_gives_a_fresh_head(tmp_path):
    source = timm.create_model("resnet10t")
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    loaded = create_model("resnet10t", pretrained=str(tmp_path / "weights.pth"), num_classes=4)
    assert loaded.fc.out_features == 4
    for name, tensor in loaded.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(tensor, source.state_dict()[name]), name


def test_create_model_hub_tag_offline_says_to_pass_a_local_file(monkeypatch):
    monkeypatch.setattr(factory, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(WeightsUnavailableError, match="local path"):
        create_model("resnet10t", pretrained="hub")
