"""Dataset registry and the views the trainer and evaluator read through.

A registered dataset is ``fn(ref: DatasetRef) -> RawDataset``: a list of items, each loading as a
``Sample`` (id, RGB PIL image, boolean mask or None, ground-truth boxes or None); the torch views
the trainer and the model evaluation read through are in ``segtricks.data.views`` (this module imports
no torch: scoring saliency maps reads datasets without it). Roots come from ``ref.root`` or
``$SEGTRICKS_DATA/<release folder>``; each dataset's docstring gives its expected layout.

Bad files (unreadable image, mask of another size, image without a mask, a file name that is not
valid UTF-8) are errors naming the file; with ``on_error: skip`` in the dataset's config they are
logged, counted and left out.

Ground-truth masks are read as 8-bit grayscale and binarised as the SOD toolboxes do: > 128 is
foreground; a mask whose maximum is 1 (a 0/1 mask) has value 1 as foreground. 0/1 masks, and masks
that do not look binary, are reported once per dataset (``mask_notes``).

Over 400 lines on purpose: the registry and every dataset's loader (each a few lines) share the
rules for files, masks and bad items, and the published sizes an estimate uses.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
from PIL import Image

from segtricks.errors import BadInput, SegtricksWarning
from segtricks.config.schema import DatasetRef
from segtricks.registry import Registry
from segtricks.data import synthetic as synthetic_module
from segtricks.data.synthetic import SPLIT_SIZES, SPLIT_STREAMS, render

# ``splits``: the values ``ref.split`` may take (config validation refuses others before anything is
# imported); a dataset registered without them has one split and ignores ``ref.split``.
DATASETS = Registry("dataset", contract="fn(ref: DatasetRef) -> RawDataset whose load(i) returns a Sample")


@dataclass(frozen=True)
class PublishedSize:
    """A dataset's size as released: what cost estimates use before the data is downloaded."""

    images: int
    typical_hw: Tuple[int, int]  # the common original size (height, width)
    split_images: Dict[str, int] = field(default_factory=dict)  # splits we cut that differ from ``images``


# From the releases (DUTS-TR: its last DUTS_TR_VAL images are our validation split).
PUBLISHED_SIZES: Dict[str, PublishedSize] = {
    "duts_tr": PublishedSize(10_553, (300, 400), {"train": 10_053, "val": 500}),
    "duts_te": PublishedSize(5_019, (300, 400)),
    "dut_omron": PublishedSize(5_168, (300, 400)),
    "ecssd": PublishedSize(1_000, (300, 400)),
    "voc07": PublishedSize(5_011, (375, 500)),
    "voc12": PublishedSize(11_540, (375, 500)),
    "coco20k": PublishedSize(19_817, (480, 640)),
    "synthetic": PublishedSize(SPLIT_SIZES["train"], (128, 128), {k: SPLIT_SIZES[k] for k in ("val", "test")}),
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DUTS_URL = "http://saliencydetection.net/duts/"
DUT_OMRON_URL = "http://saliencydetection.net/dut-omron/"
ECSSD_URL = "https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/dataset.html"
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/"
COCO_URL = "https://cocodataset.org/#download (images and annotations 2014) and the COCO20K list " \
           "coco_20k_filenames.txt of https://github.com/valeoai/LOST"


class DatasetError(BadInput, ValueError):
    """A dataset that cannot be read; the message names the folder or file and the fix."""


@dataclass
class Sample:
    id: str
    image: Image.Image
    mask: Optional[np.ndarray] = None  # bool (H, W), foreground True
    boxes: Optional[np.ndarray] = None  # (K, 4) float: x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclass
class Skipped:
    """An item left out (``on_error: skip``): its id and why."""

    id: str
    reason: str


class RawDataset:
    """Items loading as ``Sample``; subclasses set ``has_masks``/``has_boxes`` and implement the rest."""

    has_masks: bool = False
    has_boxes: bool = False
    skipped: Sequence[Skipped] = ()  # items left out while listing (on_error: skip)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def item_id(self, index: int) -> str:
        """The id of item ``index`` without loading it (names a file that fails to load)."""
        return f"#{index}"

    def item_files(self, index: int) -> Tuple[Path, ...]:
        """The files item ``index`` is read from, without reading them (none for generated items)."""
        return ()

    def identity(self) -> Dict[str, object]:
        """What, beside its files, decides the items (a generator's seed and version)."""
        return {}


def digest(raw: RawDataset) -> str:
    """A fingerprint of the items: their ids, and the names and sizes of their files (stat only, no
    image is read), with ``raw.identity()``. Two copies of a dataset with one file changed in size, one
    renamed, added or removed, differ."""
    h = hashlib.sha256(json.dumps(raw.identity(), sort_keys=True).encode())
    for i in range(len(raw)):
        files = [f"{p.name}:{p.stat().st_size}" for p in raw.item_files(i)]
        h.update("\t".join([raw.item_id(i), *files, "\n"]).encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def open_image(path: Path, mode: str) -> Image.Image:
    """The image file at ``path`` converted to ``mode``; an unreadable file is a DatasetError naming it."""
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except Exception as exc:  # PIL raises several types for truncated or non-image files
        raise DatasetError(f"cannot read {path}: {exc} (replace or remove the file)") from None


GT_THRESHOLD = 128  # an 8-bit ground truth is foreground where > 128, as pysodmetrics and the SOD toolboxes
NOT_BINARY_SHARE = 0.05  # more pixels than this neither 0 nor 255: more than anti-aliased edges


def binarise_mask(values: np.ndarray) -> np.ndarray:
    """Foreground of an 8-bit mask: value 1 of a 0/1 mask (maximum 1, > 0.5 of its range), else
    > 128. Thresholding a 0/1 mask at > 128 would score every image against an empty mask."""
    return values > (0 if values.max() == 1 else GT_THRESHOLD)


def mask_notes(path: Path, values: np.ndarray, mask: np.ndarray) -> Dict[str, str]:
    """What a dataset reports about mask ``path`` (its 8-bit ``values``, binarised as ``mask``), by
    kind; each kind is reported once per dataset."""
    hi = int(values.max())
    if hi == 1:
        return {"0/1": f"masks valued 0/1 (first: {path}): value 1 is foreground (0–255 masks: > {GT_THRESHOLD})"}
    if hi > 0 and not mask.any():
        return {"empty": f"mask {path} has non-zero values (up to {hi}) but none above {GT_THRESHOLD}, so it is "
                         f"scored as all background (a palette or label mask? save masks as 0/255)"}
    share = np.count_nonzero((values > 0) & (values < 255)) / values.size
    if share > NOT_BINARY_SHARE:
        return {"not binary": f"mask {path} is not binary ({share:.0%} of its pixels are neither 0 nor 255; "
                              f"a saliency map?): binarised at > {GT_THRESHOLD}"}
    return {}


@dataclass
class FilePairs(RawDataset):
    """Image files with optional mask files (binarised by ``binarise_mask``)."""

    items: List[Tuple[str, Path, Optional[Path]]]
    skipped: List[Skipped] = field(default_factory=list)
    name: str = "dataset"  # names the dataset in what its masks report
    reported: Set[str] = field(default_factory=set, repr=False)  # kinds of mask_notes already reported

    def __post_init__(self) -> None:
        self.has_masks = bool(self.items) and all(m is not None for _, _, m in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def item_id(self, index: int) -> str:
        return self.items[index][0]

    def item_files(self, index: int) -> Tuple[Path, ...]:
        return tuple(p for p in self.items[index][1:] if p is not None)

    def load(self, index: int) -> Sample:
        item_id, image_path, mask_path = self.items[index]
        image = open_image(image_path, "RGB")
        mask = None
        if mask_path is not None:
            values = np.asarray(open_image(mask_path, "L"))
            mask = binarise_mask(values)
            for kind, note in mask_notes(mask_path, values, mask).items():
                if kind not in self.reported:
                    self.reported.add(kind)
                    warnings.warn(f"dataset {self.name!r}: {note}", SegtricksWarning, stacklevel=2)
            if mask.shape != (image.height, image.width):
                raise DatasetError(
                    f"mask {mask_path} is {mask.shape[1]}×{mask.shape[0]} but its image {image_path} is "
                    f"{image.width}×{image.height}; masks must have their image's size"
                )
        return Sample(item_id, image, mask)


@dataclass
class BoxedImages(RawDataset):
    """Image files with ground-truth boxes, read lazily by ``read_boxes(id)``."""

    items: List[Tuple[str, Path]]
    read_boxes: Callable[[str], np.ndarray]
    has_boxes: bool = True

    def __len__(self) -> int:
        return len(self.items)

    def item_id(self, index: int) -> str:
        return self.items[index][0]

    def item_files(self, index: int) -> Tuple[Path, ...]:
        return (self.items[index][1],)

    def load(self, index: int) -> Sample:
        item_id, image_path = self.items[index]
        return Sample(item_id, open_image(image_path, "RGB"), boxes=self.read_boxes(item_id))


def dataset_root(ref: DatasetRef, folder: str, published: str, layout: str) -> Path:
    """The dataset's folder: ``ref.root`` or ``$SEGTRICKS_DATA/<folder>``; an error if missing."""
    if ref.root:
        root = Path(ref.root).expanduser()
    elif os.environ.get("SEGTRICKS_DATA"):
        root = Path(os.environ["SEGTRICKS_DATA"]) / folder
    else:
        raise DatasetError(
            f"dataset {ref.name!r}: no root; set data root in the config or $SEGTRICKS_DATA to the folder "
            f"that holds {folder}/ (layout: {layout}; published at {published})"
        )
    if not root.is_dir():
        raise DatasetError(f"dataset {ref.name!r}: folder {root} does not exist (expected layout: {layout}; "
                           f"published at {published})")
    return root


def _report_skip(ref: DatasetRef, message: str) -> None:
    warnings.warn(f"dataset {ref.name!r}: skipped: {message}", SegtricksWarning, stacklevel=3)


def utf8_name(path: Path) -> bool:
    """Whether the file's name is valid UTF-8 (undecodable bytes are lone surrogates in a str path)."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def image_mask_pairs(image_dir: Path, mask_dir: Optional[Path], ref: DatasetRef) -> FilePairs:
    if not image_dir.is_dir():
        raise DatasetError(f"dataset {ref.name!r}: image folder {image_dir} does not exist")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"dataset {ref.name!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    if mask_dir is not None and not mask_dir.is_dir():
        raise DatasetError(f"dataset {ref.name!r}: mask folder {mask_dir} does not exist")
    items, skipped = [], []
    for img in images:
        if not utf8_name(img):  # its id could not be printed nor written to records, skip lists or MLflow
            name = repr(os.fsencode(img))
            if ref.on_error != "skip":
                raise DatasetError(f"image file name {name} is not valid UTF-8 (rename the file, or set "
                                   f"on_error: skip / pass --skip-bad)")
            _report_skip(ref, f"image file name {name} is not valid UTF-8")
            skipped.append(Skipped(repr(os.fsencode(img.stem)), f"file name {name} is not valid UTF-8"))
            continue
        mask = None
        if mask_dir is not None:
            mask = mask_dir / f"{img.stem}.png"
            if not mask.is_file():
                if ref.on_error != "skip":
                    raise DatasetError(f"image {img} has no mask {mask} (add it, or set on_error: skip)")
                _report_skip(ref, f"image {img} has no mask {mask}")
                skipped.append(Skipped(img.stem, f"no mask {mask}"))
                continue
        items.append((img.stem, img, mask))
    return FilePairs(items[: ref.limit] if ref.limit else items, skipped, ref.name)


@DATASETS.register()
def folder(ref: DatasetRef) -> RawDataset:
    """Any ``<root>/images/*`` with optional ``<root>/masks/<same stem>.png``."""
    if not ref.root or not Path(ref.root).is_dir():
        raise DatasetError(f"dataset 'folder': root {ref.root!r} is not a folder (it needs images/ "
                           f"and optionally masks/)")
    root = Path(ref.root)
    masks = root / "masks"
    return image_mask_pairs(root / "images", masks if masks.is_dir() else None, ref)


DUTS_TR_VAL = 500  # the last images (sorted by name) are held out for model selection


@DATASETS.register(splits=("train", "val"))
def duts_tr(ref: DatasetRef) -> RawDataset:
    """DUTS-TR, ``DUTS-TR/DUTS-TR-Image/*.jpg`` (+ ``DUTS-TR-Mask/*.png`` for ``split: val``).

    ``split: train`` is every image but the last 500 (their labels are never used); ``split: val`` is
    those 500 with their masks: the validation set for model selection, disjoint from all test sets.
    """
    if ref.split not in ("train", "val"):
        raise DatasetError(f"dataset 'duts_tr': split {ref.split!r} unknown; use train or val")
    layout = "DUTS-TR/DUTS-TR-Image/*.jpg (and DUTS-TR/DUTS-TR-Mask/*.png for the val split)"
    root = dataset_root(ref, "DUTS-TR", DUTS_URL, layout)
    full = DatasetRef(ref.name, ref.root, ref.split, None, ref.on_error)
    if ref.split == "train":
        pairs = image_mask_pairs(root / "DUTS-TR-Image", None, full)
        pairs.items = pairs.items[:-DUTS_TR_VAL]
    else:
        pairs = image_mask_pairs(root / "DUTS-TR-Image", root / "DUTS-TR-Mask", full)
        pairs.items = pairs.items[-DUTS_TR_VAL:]
    pairs.items = pairs.items[: ref.limit] if ref.limit else pairs.items
    return pairs


@DATASETS.register()
def duts_te(ref: DatasetRef) -> RawDataset:
    """DUTS-TE, ``DUTS-TE/DUTS-TE-Image/*.jpg`` + ``DUTS-TE/DUTS-TE-Mask/*.png`` (5,019 images)."""
    root = dataset_root(ref, "DUTS-TE", DUTS_URL, "DUTS-TE/DUTS-TE-Image/*.jpg, DUTS-TE/DUTS-TE-Mask/*.png")
    return image_mask_pairs(root / "DUTS-TE-Image", root / "DUTS-TE-Mask", ref)


@DATASETS.register()
def dut_omron(ref: DatasetRef) -> RawDataset:
    """DUT-OMRON, ``DUT-OMRON/DUT-OMRON-image/*.jpg`` + ``DUT-OMRON/pixelwiseGT-new-PNG/*.png`` (5,168)."""
    root = dataset_root(ref, "DUT-OMRON", DUT_OMRON_URL,
                        "DUT-OMRON/DUT-OMRON-image/*.jpg, DUT-OMRON/pixelwiseGT-new-PNG/*.png")
    return image_mask_pairs(root / "DUT-OMRON-image", root / "pixelwiseGT-new-PNG", ref)


@DATASETS.register()
def ecssd(ref: DatasetRef) -> RawDataset:
    """ECSSD, ``ECSSD/images/*.jpg`` + ``ECSSD/ground_truth_mask/*.png`` (1,000 images)."""
    root = dataset_root(ref, "ECSSD", ECSSD_URL, "ECSSD/images/*.jpg, ECSSD/ground_truth_mask/*.png")
    return image_mask_pairs(root / "images", root / "ground_truth_mask", ref)


def voc_boxes(xml_path: Path) -> np.ndarray:
    """All object boxes of a Pascal VOC annotation, converted from 1-based inclusive pixels."""
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as exc:
        raise DatasetError(f"cannot read annotation {xml_path}: {exc}") from None
    boxes = []
    for obj in tree.getroot().iter("object"):
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x0 - 1, y0 - 1, x1, y1))
    if not boxes:
        raise DatasetError(f"annotation {xml_path} has no object boxes")
    return np.array(boxes, dtype=np.float64)


def read_text_file(path: Path, ref: DatasetRef) -> str:
    """A dataset's list or annotation file as UTF-8 text; a file that is not is an error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"dataset {ref.name!r}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                           f"replace it with the release's own file") from None


def _voc(ref: DatasetRef, year: str) -> RawDataset:
    layout = (f"VOCdevkit/VOC{year}/JPEGImages/*.jpg, VOCdevkit/VOC{year}/Annotations/*.xml, "
              f"VOCdevkit/VOC{year}/ImageSets/Main/trainval.txt")
    root = dataset_root(ref, "VOCdevkit", VOC_URL, layout) / f"VOC{year}"
    split_file = root / "ImageSets" / "Main" / "trainval.txt"
    if not split_file.is_file():
        raise DatasetError(f"dataset {ref.name!r}: {split_file} does not exist (expected layout: {layout})")
    ids = [line.split()[0] for line in read_text_file(split_file, ref).splitlines() if line.strip()]
    ids = ids[: ref.limit] if ref.limit else ids
    annotations = root / "Annotations"
    items = [(i, root / "JPEGImages" / f"{i}.jpg") for i in ids]
    for i, path in items:
        if not path.is_file():
            raise DatasetError(f"dataset {ref.name!r}: image {path} listed in {split_file} is missing")
    return BoxedImages(items, lambda i: voc_boxes(annotations / f"{i}.xml"))


@DATASETS.register()
def voc07(ref: DatasetRef) -> RawDataset:
    """Pascal VOC 2007 trainval with XML boxes (single-object discovery, CorLoc)."""
    return _voc(ref, "2007")


@DATASETS.register()
def voc12(ref: DatasetRef) -> RawDataset:
    """Pascal VOC 2012 trainval with XML boxes (single-object discovery, CorLoc)."""
    return _voc(ref, "2012")


@DATASETS.register()
def coco20k(ref: DatasetRef) -> RawDataset:
    """COCO20K: ``COCO/images/train2014/``, ``COCO/annotations/instances_train2014.json`` and LOST's
    ``COCO/coco_20k_filenames.txt``; crowd boxes are left out."""
    layout = ("COCO/images/train2014/*.jpg, COCO/annotations/instances_train2014.json, "
              "COCO/coco_20k_filenames.txt")
    root = dataset_root(ref, "COCO", COCO_URL, layout)
    list_file, ann_file = root / "coco_20k_filenames.txt", root / "annotations" / "instances_train2014.json"
    for f in (list_file, ann_file):
        if not f.is_file():
            raise DatasetError(f"dataset 'coco20k': {f} does not exist (expected layout: {layout}; from {COCO_URL})")
    names = [Path(line.strip()).name for line in read_text_file(list_file, ref).splitlines() if line.strip()]
    names = names[: ref.limit] if ref.limit else names
    try:
        coco = json.loads(read_text_file(ann_file, ref))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{ann_file} is not valid JSON: {exc}") from None
    by_name = {im["file_name"]: im["id"] for im in coco["images"]}
    boxes: Dict[int, List[Tuple[float, float, float, float]]] = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            x, y, w, h = ann["bbox"]
            boxes.setdefault(ann["image_id"], []).append((x, y, x + w, y + h))
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DatasetError(f"dataset 'coco20k': {len(missing)} files of {list_file} are not in {ann_file} "
                           f"(first: {missing[0]})")
    items = [(Path(n).stem, root / "images" / "train2014" / n) for n in names]
    ids = {Path(n).stem: by_name[n] for n in names}
    return BoxedImages(items, lambda i: np.array(boxes.get(ids[i], []), dtype=np.float64).reshape(-1, 4))


class SyntheticShapes(RawDataset):
    """``SPLIT_SIZES[split]`` generated items (``limit`` takes the first N); see segtricks.data.synthetic."""

    has_masks = True
    has_boxes = True  # one box per connected component of the mask

    def __init__(self, split: str = "train", limit: Optional[int] = None, size: int = 128, seed: int = 0) -> None:
        if split not in SPLIT_SIZES:
            raise DatasetError(f"synthetic split {split!r} unknown; choose one of {', '.join(SPLIT_SIZES)}")
        self.split, self.size, self.seed = split, size, seed
        self.length = min(limit, SPLIT_SIZES[split]) if limit else SPLIT_SIZES[split]

    def __len__(self) -> int:
        return self.length

    def item_id(self, index: int) -> str:
        return f"{self.split}_{index:05d}"

    def identity(self) -> Dict[str, object]:
        """The seed, image size and generator version (a digest of the generator's source: an edit to
        segtricks.data.synthetic may change every image, so it is a new version)."""
        source = Path(synthetic_module.__file__).read_bytes()
        return {"seed": self.seed, "size": self.size, "generator": hashlib.sha256(source).hexdigest()[:12]}

    def load(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, SPLIT_STREAMS[self.split], index])
        image, mask = render(rng, self.size)
        return Sample(self.item_id(index), Image.fromarray(image), mask, boxes_from_mask(mask))


def boxes_from_mask(mask: np.ndarray) -> np.ndarray:
    """One box (x0, y0, x1, y1; exclusive ends) per 8-connected component of a mask, (K, 4)."""
    from scipy import ndimage  # only the synthetic set uses it: scoring maps on a folder loads no SciPy

    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels) if s]
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


@DATASETS.register(splits=("train", "val", "test"))  # SPLIT_SIZES's keys, a literal: read from the source
def synthetic(ref: DatasetRef) -> RawDataset:
    """Generated shapes on textured backgrounds (segtricks.data.synthetic); splits train/val/test."""
    return SyntheticShapes(split=ref.split, limit=ref.limit)


@dataclass
class Subset(RawDataset):
    """The items ``indices`` of ``raw``, in that order (what a resumed export has left to do)."""

    raw: RawDataset
    indices: Sequence[int]

    def __len__(self) -> int:
        return len(self.indices)

    def item_id(self, index: int) -> str:
        return self.raw.item_id(self.indices[index])

    def item_files(self, index: int) -> Tuple[Path, ...]:
        return self.raw.item_files(self.indices[index])

    def load(self, index: int) -> Sample:
        return self.raw.load(self.indices[index])


def build_dataset(ref: DatasetRef) -> RawDataset:
    if ref.on_error not in ("raise", "skip"):
        raise DatasetError(f"dataset {ref.name!r}: on_error must be 'raise' or 'skip', got {ref.on_error!r}")
    return DATASETS.get(ref.name)(ref)


def load_or_skip(raw: RawDataset, index: int, on_error: str) -> Union[Sample, Skipped]:
    """``raw.load(index)``; with ``on_error == "skip"`` a bad file is warned about and gives ``Skipped``."""
    try:
        return raw.load(index)
    except DatasetError as exc:
        if on_error != "skip":
            raise
        warnings.warn(f"skipped: {exc}", SegtricksWarning)
        return Skipped(raw.item_id(index), str(exc))


# --- sizes (what an estimate prices before the data is here) ----------------------------------

@dataclass
class DatasetSize:
    images: int
    typical_hw: Tuple[int, int]
    source: str  # "data" (counted here) or "published"


def dataset_size(ref: DatasetRef) -> DatasetSize:
    """Images and typical original size: counted when the data is here, else the published figures."""
    try:
        raw = build_dataset(ref)
    except (DatasetError, OSError):
        raw = None
    if raw is not None and len(raw):
        hws = []
        for i in range(0, len(raw), max(1, len(raw) // 8))[:8]:
            files = raw.item_files(i)
            try:
                if files:
                    with Image.open(files[0]) as im:  # the image's header only: no decode
                        hws.append((im.height, im.width))
                else:
                    sample = raw.load(i)
                    hws.append((sample.image.height, sample.image.width))
            except Exception:  # an unreadable item: the run reports it; the estimate uses the others
                continue
        hw = tuple(int(statistics.median(v)) for v in zip(*hws)) if hws else (300, 400)
        return DatasetSize(len(raw), hw, "data")
    published = PUBLISHED_SIZES.get(ref.name)
    if published is None:
        raise DatasetError(f"dataset {ref.name!r} is not on this machine and has no published size; "
                           f"the estimate needs its folder ({ref.root or 'data root not set'})")
    images = published.split_images.get(ref.split, published.images)
    return DatasetSize(min(images, ref.limit) if ref.limit else images, published.typical_hw, "published")
