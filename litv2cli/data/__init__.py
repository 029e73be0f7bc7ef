"""Data for training and evaluation: sources, decoding in workers, timm transforms.

`describe_source` validates `--data` before any process starts; `open_split` gives a map-style
`ImageSplit` (or a `StreamingSplit` with `streaming=True`) whose items are
`(transformed image, label)` or `None` for an unreadable image; `collate_skip_corrupt` drops
and counts those. Sources and their conventions: `litv2cli.data.sources`, which hands each kind
to its own module (`imagefolder`, `arrow`, `hub`).
"""

from litv2cli.data.loading import collate_skip_corrupt
from litv2cli.data.sources import SourceInfo, describe_source, open_split
from litv2cli.data.splits import ImageSplit
from litv2cli.data.streaming import StreamingSplit
from litv2cli.data.transforms import build_eval_transform, build_train_transform

__all__ = ["ImageSplit", "SourceInfo", "StreamingSplit", "build_eval_transform", "build_train_transform",
           "collate_skip_corrupt", "describe_source", "open_split"]
