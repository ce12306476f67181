"""Video input: clip readers, ground-truth parsers, dataset layouts and archives."""

from mulde.video.archive import DATASET_SOURCES, describe_sources, unpack_archive
from mulde.video.clips import Clip, VideoDataset
from mulde.video.datasets import (
    DATASETS,
    discover_clips,
    load_dataset,
    locate_dataset_root,
)
from mulde.video.labels import (
    LabelError,
    labels_from_masks,
    load_clip_labels,
    load_frame_mask_folder,
    load_labels_file,
    load_mask_folder_labels,
    load_mat_label_folder,
    load_mat_labels,
    load_npy_labels,
    load_pixel_mask_labels,
    load_pixel_masks_npz,
    match_clip_labels,
    parse_ucsd_m,
)
from mulde.video.readers import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoNotFoundError,
    VideoReadError,
    count_frames,
    iter_frames,
    list_frame_files,
    read_image,
)

__all__ = [
    "DATASETS",
    "DATASET_SOURCES",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "LabelError",
    "VideoDataset",
    "VideoNotFoundError",
    "VideoReadError",
    "count_frames",
    "describe_sources",
    "discover_clips",
    "iter_frames",
    "labels_from_masks",
    "list_frame_files",
    "load_clip_labels",
    "load_dataset",
    "load_frame_mask_folder",
    "load_labels_file",
    "load_mask_folder_labels",
    "load_mat_label_folder",
    "load_mat_labels",
    "load_npy_labels",
    "load_pixel_mask_labels",
    "load_pixel_masks_npz",
    "locate_dataset_root",
    "match_clip_labels",
    "parse_ucsd_m",
    "read_image",
    "unpack_archive",
]
