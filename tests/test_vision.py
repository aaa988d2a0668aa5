"""Vision half (issue: ViT / ResNet / ImageNet data): model sizes, rotation layouts,
SGD-M equivariance under rotation, the data sources and their errors, the metrics, and a
short ``adamrot fit`` on the embedded digits. CPU only, well under 90 s on 2 cores."""
from __future__ import annotations

import functools
import io
import json
import types
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from PIL import Image

from adamrot.cli import main as cli_main
from datamodules.imagenet import ImageNetDataModule, digits_split
from lightning_modules.resnet import ResNet, ResNetLightningModule, build_resnet
from lightning_modules.vit import SimpleViT, ViTConfig, ViTLightningModule, posemb_sincos_2d
from rotations.config import RotationConfig
from rotations.layout import PARAM_TYPES, check_layout, model_layout
from rotations.optimizer import RotatedOptimizer
from rotations.scopes import GlobalUnit, RotationPlan

REPO = Path(__file__).resolve().parents[1]
SCOPES = ["global", "layerwise", "outputwise", "inputwise", "svd"]
VIT_S16_PARAMS = 21_974_632
RESNET50_PARAMS = 25_557_032
TINY_VIT = dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4,
                mlp_dim=64, channels=1)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return SimpleViT(ViTConfig(**TINY_VIT))


def tiny_resnet(seed=0):
    torch.manual_seed(seed)
    return build_resnet("tiny", num_classes=10, channels=1, width=4)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# -- sizes and layouts (meta device: no memory, no init cost) -------------------------------
def test_parameter_counts_on_meta():
    with torch.device("meta"):
        vit, r50 = SimpleViT(), build_resnet("resnet50")
        r18 = build_resnet("resnet18")
        tiny_r = build_resnet("tiny", num_classes=10, channels=1, width=16)
        tiny_v = SimpleViT(ViTConfig(image_size=16, patch_size=4, num_classes=10, dim=64,
                                     depth=4, heads=4, mlp_dim=256, channels=1))
        tv50 = torchvision.models.resnet50(weights=None, num_classes=1000)
    assert n_params(vit) == VIT_S16_PARAMS                 # ViT-S/16: "22M"
    assert n_params(r50) == RESNET50_PARAMS == n_params(tv50)
    assert n_params(r18) == 11_689_512
    assert n_params(tiny_r) == 308_538 and n_params(tiny_v) == 201_802   # the tiny.yaml models
    # resnet50 is torchvision's model: same names, same shapes
    assert {k: v.shape for k, v in r50.state_dict().items()} == \
        {k: v.shape for k, v in tv50.state_dict().items()}
    assert "pos_embed" not in dict(vit.named_parameters())     # a buffer, not a parameter
    assert "pos_embed" not in vit.state_dict()                  # recomputed, not stored
    for m in (vit, r50, r18):
        check_layout(m.parameters(), model_layout(m))


def test_vit_layout_types_and_shapes():
    with torch.device("meta"):
        vit = SimpleViT()
    views = {v.name: v for v in vit.rotation_layout()}
    assert {v.ptype for v in views.values()} == {"patch_embed", "query", "key", "value",
                                                 "attn_out", "mlp_in", "mlp_out", "norm",
                                                 "head", "bias"}
    assert set(v.ptype for v in views.values()) <= set(PARAM_TYPES)
    assert views["patch_embed.weight"].shape == (384, 3 * 16 * 16)     # conv as (out, in*k*k)
    for j, part in enumerate(("query", "key", "value")):
        v = views[f"blocks.3.attn.c_attn.weight[{part}]"]
        assert v.ptype == part and v.shape == (384, 384) and v.rows == (384 * j, 384 * (j + 1))
        assert views[f"blocks.3.attn.c_attn.bias[{part}]"].ptype == "bias"
    assert views["blocks.0.mlp.c_fc.weight"].shape == (1536, 384)
    assert views["blocks.0.mlp.c_proj.weight"].ptype == "mlp_out"
    assert views["head.weight"].shape == (1000, 384) and views["head.bias"].ptype == "bias"
    assert views["blocks.11.ln_2.weight"].ptype == "norm" and views["norm.bias"].ptype == "norm"
    assert sum(v.numel for v in views.values()) == VIT_S16_PARAMS


def test_resnet_layout_types_and_shapes():
    with torch.device("meta"):
        r50 = build_resnet("resnet50")
    views = {v.name: v for v in r50.rotation_layout()}
    assert views["conv1.weight"].ptype == "conv" and views["conv1.weight"].shape == (64, 147)
    assert views["layer2.0.downsample.0.weight"].ptype == "conv"          # found by isinstance
    assert views["layer2.0.downsample.0.weight"].shape == (512, 256)
    assert views["layer4.2.conv2.weight"].shape == (512, 512 * 9)
    assert views["layer2.0.downsample.1.weight"].ptype == "norm"
    assert views["bn1.bias"].ptype == "norm"
    assert views["fc.weight"].ptype == "fc" and views["fc.weight"].shape == (1000, 2048)
    assert views["fc.bias"].ptype == "bias"
    assert {v.ptype for v in views.values()} == {"conv", "norm", "fc", "bias"}
    assert sum(v.numel for v in views.values()) == RESNET50_PARAMS


def test_sincos_posemb_matches_big_vision_formula():
    pe = posemb_sincos_2d(2, 3, 8)
    assert pe.shape == (6, 8)
    # patch (row 1, col 2): x = 2, y = 1, omega = [1, 1/10000]
    omega = torch.tensor([1.0, 1e-4], dtype=torch.float64)
    expect = torch.cat([(2 * omega).sin(), (2 * omega).cos(), omega.sin(), omega.cos()])
    assert torch.allclose(pe[5].double(), expect, atol=1e-7)


# -- rotations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("model_fn", [tiny_vit, tiny_resnet], ids=["vit", "resnet"])
def test_rotate_unrotate_identity(scope, model_fn):
    model = model_fn().double()
    views = model_layout(model)
    check_layout(model.parameters(), views)
    plan = RotationPlan(views, RotationConfig(scope=scope, block_size=16))
    assert plan.units
    g = torch.Generator().manual_seed(0)
    for u in plan.units:
        mats = [torch.randn(v.shape, dtype=torch.float64, generator=g) for v in u.views]
        if scope == "svd":
            u.refresh(torch.randn(u.views[0].shape, dtype=torch.float64, generator=g), 1)
        rot = u.rotate(mats)
        back = u.unrotate(rot)
        for m, r, b in zip(mats, rot, back):
            assert r.shape == b.shape == m.shape
            assert torch.allclose(m, b, atol=1e-12)


def _train_sgd(module, batches, rotation):
    module.rotation = RotationConfig.coerce(rotation)
    opt = module.build_optimizer()
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return opt, losses


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_sgd_momentum_global_rotation_follows_unrotated_trajectory(kind):
    """Proposition 1 on the vision models (BatchNorm in train mode: the forward is the same
    function of the weights in both runs, so the trajectories must agree)."""
    sgd = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3)

    def make():
        torch.manual_seed(0)
        if kind == "vit":
            return ViTLightningModule(**TINY_VIT, optimizer=sgd).double()
        return ResNetLightningModule(arch="tiny", width=4, num_classes=10, channels=1,
                                     optimizer=sgd).double()

    x, y, _, _ = digits_split(16)
    batches = [(x[i:i + 32].double(), y[i:i + 32]) for i in range(0, 12 * 32, 32)]
    ref, rot = make(), make()
    ref_opt, l_ref = _train_sgd(ref, batches, None)
    rot_opt, l_rot = _train_sgd(rot, batches, {"scope": "global", "block_size": 64})
    assert isinstance(ref_opt, torch.optim.SGD)
    assert isinstance(rot_opt, RotatedOptimizer)
    assert isinstance(rot_opt.plan.units[0], GlobalUnit)
    w_ref = torch.cat([p.detach().flatten() for p in ref.parameters()])
    w_rot = torch.cat([p.detach().flatten() for p in rot.parameters()])
    w0 = torch.cat([p.detach().flatten() for p in make().parameters()])
    assert (w_ref - w0).abs().max() > 1e-2                       # it did train
    assert (w_ref - w_rot).abs().max() < 1e-9
    assert max(abs(a - b) for a, b in zip(l_ref, l_rot)) < 1e-9
    assert sum(l_ref[-3:]) < sum(l_ref[:3])


# -- metrics -----------------------------------------------------------------------------------
def test_accuracy_metrics_match_hand_computation():
    torch.manual_seed(0)
    m = ViTLightningModule(**TINY_VIT)
    logits = torch.randn(2, 32, 10)                   # two validation batches, no ties
    labels = torch.randint(0, 10, (2, 32))
    labels[0, :4] = logits[0, :4].argmax(-1)          # make top-1 hits certain
    calls = iter(logits)
    m.forward = lambda x: next(calls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # self.log without a trainer
        for b in range(2):
            m.validation_step((torch.zeros(32, 1, 16, 16), labels[b]), b)
    flat_logits, flat_labels = logits.reshape(-1, 10), labels.reshape(-1)
    top5 = flat_logits.topk(5, dim=-1).indices
    acc1 = (top5[:, 0] == flat_labels).double().mean().item()
    acc5 = (top5 == flat_labels[:, None]).any(-1).double().mean().item()
    ce = torch.nn.functional.cross_entropy(flat_logits, flat_labels).item()
    metrics = m.eval_metrics["val"]
    assert metrics["acc1"].compute().item() == pytest.approx(acc1, abs=1e-7)
    assert metrics["acc5"].compute().item() == pytest.approx(acc5, abs=1e-7)
    assert metrics["loss"].compute().item() == pytest.approx(ce, rel=1e-6)
    assert 0 < acc1 < acc5 < 1


def test_model_checks_the_datamodule():
    m = ViTLightningModule(**dict(TINY_VIT, num_classes=7))
    m._trainer = types.SimpleNamespace(datamodule=ImageNetDataModule(), logger=None)
    with pytest.raises(ValueError, match="data.num_classes=10 does not match model.num_classes=7"):
        m.on_fit_start()


# -- data --------------------------------------------------------------------------------------
def test_embedded_digits_split_is_deterministic_and_disjoint():
    a, b = digits_split(16), digits_split(16)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    x_tr, y_tr, x_va, y_va = a
    assert len(y_tr) + len(y_va) == 1797 and len(y_va) == 359
    assert x_tr.shape[1:] == (1, 16, 16)
    assert torch.bincount(y_va).min() >= 35                       # stratified
    dm = ImageNetDataModule()
    assert (dm.num_classes, dm.image_size, dm.channels) == (10, 16, 1)


def _png(color, size=(20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root: Path, classes=("cat", "dog"), per_class=2):
    for split in ("train", "val"):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                (d / f"{i}.png").write_bytes(_png((40 * ci, 10 * i, 200)))
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMROT_CACHE", str(tmp_path / "cache"))


def test_folder_source_reads_images(tmp_path):
    root = _tree(tmp_path / "imnet")
    dm = ImageNetDataModule(source="folder", root=str(root), image_size=8, batch_size=2,
                            num_workers=0)
    assert (dm.num_classes, dm.channels, dm.image_size) == (2, 3, 8)
    dm.setup("fit")                                   # prepared into the cache
    assert str(dm.prepared).startswith(str(tmp_path / "cache"))
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert sorted(int(t) for _, t in dm.val_set) == [0, 0, 1, 1]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 8, 8)


def test_prepared_images_stream_shuffled_and_resume_exactly(tmp_path):
    """``adamrot prepare imagefolder`` then ``prepared: DIR``: every image once per epoch, a
    new order each epoch, and a loader restored from ``state_dict()`` continues exactly."""
    from adamrot.prepare import main as prepare_main

    root = _tree(tmp_path / "imnet", classes=("a", "b", "c"), per_class=8)
    out = tmp_path / "prepared"
    assert prepare_main(["imagefolder", str(root), "--out", str(out), "--workers", "2",
                         "--no-progress"]) == 0
    dm = ImageNetDataModule(prepared=str(out), image_size=8, batch_size=4, num_workers=0,
                            crop_scale=(1.0, 1.0))
    assert (dm.num_classes, dm.channels) == (3, 3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    epoch1 = [y for _, y in loader]
    epoch2 = [y for _, y in loader]
    assert sorted(torch.cat(epoch1).tolist()) == [0] * 8 + [1] * 8 + [2] * 8
    assert torch.cat(epoch1).tolist() != torch.cat(epoch2).tolist()
    first = ImageNetDataModule(prepared=str(out), image_size=8, batch_size=4, num_workers=0)
    first.setup("fit")
    fl = first.train_dataloader()
    it = iter(fl)
    for _ in range(2):
        next(it)
    state = fl.state_dict()
    resumed = ImageNetDataModule(prepared=str(out), image_size=8, batch_size=4, num_workers=0)
    resumed.setup("fit")
    rl = resumed.train_dataloader()
    rl.load_state_dict(state)
    assert [y.tolist() for _, y in rl] == [y.tolist() for y in epoch1[2:]]


def test_folder_source_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ImageNetDataModule(source="folder", root=str(missing))
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "val").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"flat/train.* has no class folders"):
        ImageNetDataModule(source="folder", root=str(tmp_path / "flat"))
    empty = _tree(tmp_path / "empty", per_class=0)
    with pytest.raises(ValueError, match=r"empty/train.* contains no images"):
        ImageNetDataModule(source="folder", root=str(empty))
    root = _tree(tmp_path / "bad")
    (root / "val" / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    dm = ImageNetDataModule(source="folder", root=str(root), image_size=8, batch_size=2,
                            num_workers=0)
    bad = str(root / "val" / "cat" / "0.png")
    with pytest.raises(ValueError, match=f"^{bad}: cannot decode image"):
        dm.setup("fit")                               # checked while preparing
    with pytest.raises(ValueError, match=f"{tmp_path / 'nope'}: prepared dataset directory"):
        ImageNetDataModule(prepared=str(tmp_path / "nope"))


def _parquet(path: Path, rows, metadata=None):
    import pyarrow as pa
    import pyarrow.parquet as pq
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": b, "path": p} for b, p, _ in rows],
                                        type=img_type),
                      "label": pa.array([lab for _, _, lab in rows], type=pa.int64())})
    if metadata is not None:
        table = table.replace_schema_metadata({"huggingface": json.dumps(metadata)})
    pq.write_table(table, path)
    return str(path)


def test_parquet_source_reads_images(tmp_path):
    rows = [(_png((i * 30, 0, 0)), f"img{i}.JPEG", i % 3) for i in range(6)]
    train = _parquet(tmp_path / "train-00000.parquet", rows)
    val = _parquet(tmp_path / "validation-00000.parquet", rows[:4])
    dm = ImageNetDataModule(source="parquet", train_files=str(tmp_path / "train-*.parquet"),
                            val_files=[val], image_size=8, batch_size=3, num_workers=0)
    assert dm.train_files == [train]
    assert (dm.num_classes, dm.channels) == (3, 3)                 # max(label) + 1
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 6 and len(dm.val_set) == 4
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (3, 3, 8, 8) and y.tolist() == [0, 1, 2]     # validation: in order
    # the hub's schema metadata (ClassLabel) gives the class count
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"_type": "ClassLabel",
                                            "names": [f"c{i}" for i in range(5)]}}}}
    hub = _parquet(tmp_path / "hub.parquet", rows, metadata=meta)
    dm = ImageNetDataModule(source="parquet", train_files=hub, val_files=hub,
                            image_size=8, batch_size=2, num_workers=0)
    assert dm.num_classes == 5
    dm.setup("fit")
    assert dm.train_set[0][0].shape == (3, 8, 8)


def test_parquet_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train_files: no file matches"):
        ImageNetDataModule(source="parquet", train_files=str(tmp_path / "nope-*.parquet"),
                           val_files=str(tmp_path / "nope.parquet"))
    rows = [(_png((0, 0, 0)), "good.JPEG", 0), (b"garbage", "n01440764_42.JPEG", 1)]
    f = _parquet(tmp_path / "bad.parquet", rows)
    dm = ImageNetDataModule(source="parquet", train_files=f, val_files=f, image_size=8,
                            batch_size=1, num_workers=0)
    with pytest.raises(ValueError, match=r"bad.parquet row 1 \(n01440764_42.JPEG\): cannot "
                                         r"decode image"):
        dm.setup("fit")


@pytest.mark.parametrize("kwargs,match", [
    (dict(source="hub"), "data.source: 'hub' is not allowed; choose one of embedded, folder"),
    (dict(batch_size=0), "data.batch_size must be a positive int"),
    (dict(num_workers=-1), "data.num_workers"),
    (dict(crop_ratio=1.5), "data.crop_ratio"),
    (dict(crop_scale=[0.5, 0.1]), "data.crop_scale"),
    (dict(val_fraction=1.0), "data.val_fraction"),
    (dict(source="folder"), "data.root is required"),
    (dict(source="parquet"), "data.train_files and data.val_files are required"),
    (dict(num_classes=1000), "data.num_classes=1000 but the embedded digits have 10"),
])
def test_datamodule_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageNetDataModule(**kwargs)


# -- configs and the CLI -----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vit_s16", "resnet50"])
def test_configs_compose(family, capsys):
    """base.yaml + one scope file per rotation scope parse into the paper's settings."""
    d = REPO / "configs" / family
    for scope in ["none"] + SCOPES:
        with pytest.raises(SystemExit) as e:
            cli_main(["fit", "--config", str(d / "base.yaml"), "--config",
                      str(d / f"{scope}.yaml"), "--print_config"])
        assert e.value.code in (0, None)
        cfg = yaml.safe_load(capsys.readouterr().out)
        args = cfg["model"]["init_args"]
        assert args["rotation"]["scope"] == scope
        opt = args["optimizer"]
        assert opt["class_path"] == "torch.optim.AdamW"
        assert opt["init_args"]["lr"] == 1e-3 and opt["init_args"]["betas"] == [0.9, 0.999]
        assert opt["init_args"]["weight_decay"] == (0.1 if family == "vit_s16" else 1e-4)
        assert args["warmup_epochs"] == 5 and cfg["trainer"]["max_epochs"] == 100
        assert cfg["trainer"]["precision"] == "bf16-mixed"
        t = cfg["trainer"]
        batch = cfg["data"]["init_args"]["batch_size"] * t["devices"] * t["num_nodes"] * \
            t["accumulate_grad_batches"]
        assert batch == (1024 if family == "vit_s16" else 256)


def test_fit_tiny_vit_bf16_through_cli(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli_main(["fit", "--config", str(REPO / "configs/vit_s16/tiny.yaml"),
              "--config", str(REPO / "configs/vit_s16/global.yaml"),
              "--trainer.max_steps", "44", "--trainer.default_root_dir", str(tmp_path),
              "--trainer.precision", "bf16-mixed", "--trainer.log_every_n_steps", "1",
              "--checkpoint.every_n_train_steps", "44"])
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    losses = [e.value for e in ea.Scalars("train/loss")]
    assert len(losses) >= 40
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5           # loss falls
    acc = [e.value for e in ea.Scalars("val/acc1")]
    assert len(acc) == 2 and acc[-1] > 0.3                              # chance is 0.1
    assert {"val/acc5", "val/loss", "train/acc1"} <= set(ea.Tags()["scalars"])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    m = ViTLightningModule.load_from_checkpoint(ckpt, weights_only=True)
    assert m.rotation.scope == "global" and m.config.image_size == 16
