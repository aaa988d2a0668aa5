"""ResNets from torchvision with a rotation layout, and their LightningModule (paper
Fig. 1c).

``build_resnet("resnet50")`` is exactly ``torchvision.models.resnet50(weights=None)`` (25,557,032
parameters with 1000 classes; the tests check it), ``"resnet18"`` likewise, and ``"tiny"`` a
CPU-sized ResNet for 16 px thumbnails: ``BasicBlock`` layers ``[1, 1, 1, 1]`` of widths
``w, 2w, 4w, 8w`` and a 3x3 stride-1 stem without max-pool (308,538 parameters with 1
channel, 10 classes, w = 16). Initialisation is torchvision's. The rotation layout is in
:meth:`ResNet.rotation_layout` (docs/CONVENTIONS.md §3).
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.resnet import ResNet as _TorchvisionResNet

from rotations.layout import LayerView

from .checks import positive_int
from .classification import ClassificationModule

__all__ = ["ResNet", "build_resnet", "ResNetLightningModule", "ARCHS"]

ARCHS = ("resnet50", "resnet18", "tiny")
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


class ResNet(_TorchvisionResNet):
    """``torchvision.models.ResNet`` with a rotation layout.

    Args:
        block, layers, num_classes, zero_init_residual: torchvision's.
        channels: input channels (replaces the stem conv when not 3).
        widths: the four stage widths (torchvision: ``(64, 128, 256, 512)``); other widths
            rebuild the stages with torchvision's own ``_make_layer``.
        stem: ``"imagenet"`` (7x7 stride 2 + 3x3 max-pool) or ``"thumbnail"`` (3x3 stride 1,
            no max-pool).
    """

    def __init__(self, block, layers: Sequence[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, channels: int = 3,
                 widths: Sequence[int] = (64, 128, 256, 512),
                 stem: Literal["imagenet", "thumbnail"] = "imagenet"):
        super().__init__(block, list(layers), num_classes=num_classes,
                         zero_init_residual=zero_init_residual)
        widths = tuple(widths)
        if len(widths) != 4:
            raise ValueError(f"ResNet widths must be four positive ints, got {widths!r}")
        for w in widths:
            positive_int("ResNet widths", w)
        if stem not in ("imagenet", "thumbnail"):
            raise ValueError(f"ResNet stem must be 'imagenet' or 'thumbnail', got {stem!r}")
        if widths == (64, 128, 256, 512) and stem == "imagenet" and channels == 3:
            return                                  # torchvision's model, untouched
        # rebuild the stem and the stages with torchvision's building blocks
        self.inplanes, self.dilation = widths[0], 1
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(channels, widths[0], kernel_size=7, stride=2, padding=3,
                                   bias=False)
        else:
            self.conv1 = nn.Conv2d(channels, widths[0], kernel_size=3, stride=1, padding=1,
                                   bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = self._norm_layer(widths[0])
        if widths != (64, 128, 256, 512):
            self.layer1 = self._make_layer(block, widths[0], layers[0])
            self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
            self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
            self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
            self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        self._torchvision_init(zero_init_residual)

    @torch.no_grad()
    def _torchvision_init(self, zero_init_residual: bool) -> None:
        """The init loop of ``torchvision.models.ResNet.__init__`` (for rebuilt modules)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    # -- rotation layout ------------------------------------------------------------------
    def rotation_layout(self) -> list[LayerView]:
        """Walks the modules (``isinstance``, never name patterns): ``nn.Conv2d`` weight ->
        ``conv`` ``(out, in*kh*kw)``; BatchNorm weight and bias -> ``norm`` columns, each its
        own layer; ``nn.Linear`` weight -> ``fc``; biases -> ``bias`` (``of`` in ``meta``).
        ``layer_id`` is the module path for matrices and the view's name for 1-D parameters;
        ``meta`` holds ``module`` and ``stage`` (``"stem"``, ``"layer1"``..``"layer4"``,
        ``"fc"``). A parameter outside these modules is an error."""
        views: list[LayerView] = []
        seen: set[int] = set()
        for mod_name, mod in self.named_modules():
            own = list(mod.named_parameters(recurse=False))
            if not own:
                continue
            if isinstance(mod, nn.Conv2d):
                wtype = "conv"
            elif isinstance(mod, nn.Linear):
                wtype = "fc"
            elif isinstance(mod, _NORMS):
                wtype = "norm"
            else:
                raise ValueError(f"ResNet.rotation_layout: no parameter type for module "
                                 f"{mod_name!r} ({type(mod).__name__})")
            stage = mod_name.split(".")[0] if mod_name.startswith("layer") else \
                ("fc" if wtype == "fc" else "stem")
            for p_name, p in own:
                if id(p) in seen:
                    continue
                seen.add(id(p))
                full = f"{mod_name}.{p_name}"
                meta = {"module": mod_name, "stage": stage}
                if wtype == "norm":
                    ptype = "norm"
                elif p_name == "weight":
                    ptype = wtype
                else:
                    ptype, meta["of"] = "bias", wtype
                layer_id = mod_name if p.dim() >= 2 else full
                views.append(LayerView(name=full, param=p, ptype=ptype, param_name=full,
                                       layer_id=layer_id, meta=meta))
        return views

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_resnet(arch: str = "resnet50", num_classes: int = 1000, channels: int = 3,
                 width: int = 16, zero_init_residual: bool = False) -> ResNet:
    """One of :data:`ARCHS`; ``width`` is used by ``"tiny"``."""
    if arch == "resnet50":
        return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual, channels)
    if arch == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual, channels)
    if arch == "tiny":
        positive_int("model.width", width)
        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes, zero_init_residual, channels,
                      widths=(width, 2 * width, 4 * width, 8 * width), stem="thumbnail")
    raise ValueError(f"model.arch: {arch!r} is not allowed; choose one of {', '.join(ARCHS)}")


def forward_macs(model: nn.Module, channels: int, image_size: int) -> int:
    """Multiply-adds of the convs and Linear layers in one forward pass of one image, counted
    with forward hooks on a meta-device copy of the architecture (no memory, no compute)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out.numel() * (mod.in_channels // mod.groups) * \
                mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.empty(1, channels, image_size, image_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total


class ResNetLightningModule(ClassificationModule):
    """A torchvision ResNet trained by classification (paper Fig. 1c).

    Args:
        arch: ``"resnet50"`` (paper), ``"resnet18"``, or ``"tiny"`` (CPU, thumbnails).
        num_classes, channels: head width and input channels.
        width: first-stage width of ``"tiny"`` (ignored otherwise).
        zero_init_residual: torchvision's option (last BN of each block starts at 0).
        image_size: only used for the FLOP count (MFU; default: the datamodule's
            ``image_size``, else 224). ResNets pool globally: any input size works.
        kwargs: :class:`~lightning_modules.classification.ClassificationModule`'s and
            :class:`~lightning_modules.base.RotatableModule`'s.
    """

    def __init__(self, arch: Literal["resnet50", "resnet18", "tiny"] = "resnet50",
                 num_classes: int = 1000, channels: int = 3, width: int = 16,
                 zero_init_residual: bool = False, image_size: Optional[int] = None,
                 **kwargs):
        positive_int("model.channels", channels)
        positive_int("model.image_size", image_size, optional=True)
        super().__init__(num_classes=num_classes, **kwargs)
        self.arch, self.num_classes, self.channels = arch, num_classes, channels
        self.width, self.image_size = width, image_size
        self._flops: Optional[int] = None

    def configure_models(self) -> None:
        h = self.hparams
        self.model = build_resnet(h.arch, h.num_classes, h.channels, h.width,
                                  h.zero_init_residual)

    def flops_per_sample(self) -> Optional[float]:
        """Training FLOPs per image: 3 (forward + backward) x 2 x forward multiply-adds of
        the convs and the head, at ``image_size``."""
        if self._flops is None:
            size = self.image_size
            if size is None:
                dm = getattr(self._trainer, "datamodule", None) if self._trainer else None
                size = getattr(dm, "image_size", None) or 224
            with torch.device("meta"):
                meta = build_resnet(self.arch, self.num_classes, self.channels, self.width)
            self._flops = 6 * forward_macs(meta.eval(), self.channels, size)
        return float(self._flops)

    def expected_data(self) -> dict:
        # ResNets pool globally: any image size works (image_size only feeds the FLOP count)
        return {"num_classes": self.num_classes, "channels": self.channels}
