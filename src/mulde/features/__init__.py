"""Grid-cell, object-centric and frame-centric video features with a per-clip cache.

:func:`extract_dataset` is the entry point: it extracts the features of every
clip of a :class:`~mulde.video.clips.VideoDataset` as :class:`ClipFeatures`
records, in the mode and with the settings of a :class:`FeatureConfig`, and
caches them on disk.
"""

from mulde.features.backbone import (
    Backbone,
    get_backbone,
    list_backbones,
    register_backbone,
)
from mulde.features.cache import (
    ClipFeatures,
    DatasetFeatures,
    FeatureConfig,
    extract_dataset,
)
from mulde.features.frames import extract_frame_features
from mulde.features.grid import extract_grid_features
from mulde.features.objects import extract_object_features
from mulde.features.proposals import ProposalConfig

__all__ = [
    "Backbone",
    "ClipFeatures",
    "DatasetFeatures",
    "FeatureConfig",
    "ProposalConfig",
    "extract_dataset",
    "extract_frame_features",
    "extract_grid_features",
    "extract_object_features",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
