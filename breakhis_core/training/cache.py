"""Frozen-prefix activation cache: fast two-stage training on an ordinary CPU.

Why: both stages of the paper's recipe leave the front of the base untouched. Stage "frozen"
trains only the head; stage "finetuned" trains the last block and the head (``unfreeze=1``; VGG16: block5),
so VGG16's ``block1_conv1 … block4_pool`` never changes. On a 2-core CPU a forward pass through it costs
~0.3 s per 224×224 image, and a plain ``model.fit`` pays it again in every one of the 45 epochs.
Here it is paid once per cached view:

- the *prefix* (input → the backbone's cache split layer, ``Backbone.cache_split_layer``: the last layer of the
  last block frozen in stage 2, VGG16: ``block4_pool``) runs once over K augmented views of every training
  image and once over every validation image; its activations are stored as float16 in memory-mapped files
  (VGG16: ``14×14×512`` = 196 KiB per view at 224);
- stage 1 derives the head's input (the frozen last block + ``head_pool``) from those files once and
  trains the head on it;
- stage 2 trains the last block + head on the cached activations.

Sub-models are cut out of the classifier's graph with Keras' functional API (:func:`prefix_model`,
:func:`suffix_model`) and share its layer objects, so training them trains the full model (skip connections
inside a block included), and ``frozen.keras`` / ``finetuned.keras`` are the ordinary full models.

Augmentation (``augment.py``: flips, 90° rotations, crop/zoom, brightness/contrast, noise)
survives as K cached views per training image, of which each epoch draws one per image at
random (with replacement across epochs). What this is and is not equivalent to:

- Flips and 90° rotations (the 8-element dihedral group): each image's views take distinct
  group elements (a random permutation of the 8; K > 8 cycles through fresh permutations). With
  K = 8 (the default) or a multiple, every element is cached equally often, so the orientation
  seen in each epoch is uniform and independent across epochs: *exactly* the on-the-fly
  distribution. With K < 8 each image only ever appears in K orientations (all 8 still appear
  equally often over the images).
- Crop/zoom (80–100 %), brightness (±20), contrast (×0.85–1.15) and gaussian noise (σ 4): each
  view bakes in one draw from the same distributions as ``augment.augment`` (the same constants
  and the same ``augment.crop_and_jitter``), so an epoch's input has the on-the-fly marginal
  distribution, but an image has only K distinct draws in the whole run instead of a fresh one
  per epoch (25 + 20 epochs):
  less variety, i.e. weaker regularisation. Not equivalent.
- On-the-fly augmentation draws one rotation per batch and flips per image; the cache draws
  everything per image. Same per-image distribution, different within-batch correlation.
- Activations are stored in float16 (≈3 significant digits); block5 and the head compute in
  float32 (or the mixed policy) as usual.
- Without augmentation (``augment=False``) one unaugmented view is cached and training is
  equivalent to the plain path up to float16 rounding.

Validation images are cached once, unaugmented, as the plain path evaluates them.

Files: ``<root>/<key>/activations.f16`` (raw float16, C order, shape ``(N, K, h, w, c)``),
``meta.json`` (shape, key, …) written last, ``labels.npy``, and ``features-<hash>.f16`` (+ ``.json``)
derived for stage 1. ``root`` is ``$BREAKHIS_CACHE`` or ``<runs>/.cache/activations``; ``key`` hashes
the image pixels after loading/stain normalisation/resizing, the labels, the prefix layer
and its weights, K, the seed and the augmentation settings, so a rerun on the same data
reuses the files and any change builds new ones. Files are written under a temporary name and
renamed when complete; a crash never leaves a cache that looks complete. The folder can be
deleted at any time (it is rebuilt when needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from breakhis_core.data.augment import (
    BRIGHTNESS,
    CONTRAST,
    CROP_SCALE,
    DIHEDRAL,
    NOISE_STD,
    crop_and_jitter,
    dihedral,
    settings,
)
from breakhis_core.config import STAGES
from breakhis_core.training.distribute import batch_bounds
from breakhis_core.errors import BreakHisError, DiskSpaceError
from breakhis_core.files import format_bytes, write_json_atomic

CACHE_VERSION = 1
DTYPE = np.float16
FLOAT16_MAX = float(np.finfo(np.float16).max)
DISK_HEADROOM = 1 << 30
"""Free space left on the cache's disk after writing it (1 GiB)."""


# ----------------------------------------------------------------------------- layers


def prefix_model(model, layer: str):
    """``keras.Model`` from the classifier's input to ``layer``'s output, sharing the layers."""
    import keras

    return keras.Model(model.inputs[0], model.get_layer(layer).output, name=f"prefix_to_{layer}")


def suffix_model(model, layer: str, last: str | None = None):
    """``keras.Model`` from ``layer``'s output to ``last``'s output (default: the classifier's output).

    Built with Keras' functional API on the classifier's own graph (the input is ``layer``'s output tensor), so the
    sub-model *shares* the layer objects and their weights (training it trains the classifier, which stays an
    ordinary full model), and skip connections inside the suffix are kept. ``layer`` must be a block boundary
    (``Backbone.cache_split_layer``, ``head_pool``): nothing after it may read a tensor from before it.

    Raises:
        ValueError: when ``layer`` or ``last`` is not in the model, or the suffix needs tensors from before ``layer``.
    """
    import keras

    names = {l.name for l in model.layers}
    for name in (layer, last):
        if name is not None and name not in names:
            raise ValueError(f"layer not found in the model. Received: layer={name}")
    outputs = model.get_layer(last).output if last else model.outputs[0]
    try:
        return keras.Model(model.get_layer(layer).output, outputs, name=f"from_{layer}")
    except ValueError as exc:
        raise ValueError(f"the model cannot be split at {layer}: layers after it read tensors from before it "
                         f"({exc}). Received: layer={layer}") from None


def weights_digest(layers) -> str:
    """BLAKE2b of the weights of ``layers`` (names, shapes and float32 bytes), hex."""
    digest = hashlib.blake2b(digest_size=16)
    for layer in layers:
        for weight in layer.get_weights():
            digest.update(f"{layer.name}:{weight.shape}".encode())
            digest.update(np.ascontiguousarray(weight, dtype=np.float32).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- views


@dataclass(frozen=True)
class ViewSpec:
    """How the views of a cache part are made.

    Attributes:
        views: K, views per image (1 for validation).
        augment: False → each view is the image itself.
        seed: seed of the per-image random draws.
    """

    views: int
    augment: bool
    seed: int

    def to_dict(self) -> dict:
        return {"views": self.views, "augment": self.augment, "seed": self.seed, **settings()}


def view_parameters(index: int, spec: ViewSpec, size: int) -> list[dict]:
    """The random draws of image ``index``'s views: dihedral element, crop box, brightness, contrast, noise seed.

    Deterministic in (seed, index): a view does not depend on batch composition or on which
    other images are cached.
    """
    rng = np.random.default_rng([spec.seed, index, CACHE_VERSION])
    elements = np.concatenate([rng.permutation(DIHEDRAL) for _ in range(-(-spec.views // DIHEDRAL))])
    params = []
    for view in range(spec.views):
        scale = rng.uniform(*CROP_SCALE)
        offset = rng.uniform(0.0, 1.0, 2) * (1.0 - scale)
        params.append({
            "element": int(elements[view]),
            "box": np.array([offset[0], offset[1], offset[0] + scale, offset[1] + scale], np.float32),
            "brightness": np.float32(rng.uniform(-BRIGHTNESS, BRIGHTNESS)),
            "contrast": np.float32(rng.uniform(*CONTRAST)),
            "noise_seed": int(rng.integers(2**63)),
        })
    return params


def _jitter_fn(size: int):
    """tf.function of ``augment.crop_and_jitter`` for ``(B, size, size, 3)`` view batches (traced once per size)."""
    import tensorflow as tf

    spec = [
        tf.TensorSpec((None, size, size, 3), tf.float32),
        tf.TensorSpec((None, 4), tf.float32),
        tf.TensorSpec((None,), tf.float32),
        tf.TensorSpec((None,), tf.float32),
        tf.TensorSpec((None, size, size, 3), tf.float32),
    ]
    return tf.function(crop_and_jitter, input_signature=spec)


def make_views(images: np.ndarray, pairs: list[tuple[int, int]], spec: ViewSpec, jitter=None) -> np.ndarray:
    """The views ``(image index, view index)`` of ``images`` as float32 RGB in [0, 255], ``(len(pairs), S, S, 3)``."""
    size = images.shape[1]
    if not spec.augment:
        return images[[i for i, _ in pairs]].astype(np.float32)
    jitter = jitter or _jitter_fn(size)
    cache: dict[int, list[dict]] = {}
    batch, boxes, brightness, contrast, noise = [], [], [], [], []
    for index, view in pairs:
        params = cache.setdefault(index, view_parameters(index, spec, size))[view]
        batch.append(dihedral(images[index], params["element"]))
        boxes.append(params["box"])
        brightness.append(params["brightness"])
        contrast.append(params["contrast"])
        rng = np.random.default_rng(params["noise_seed"])
        noise.append(rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(NOISE_STD))
    out = jitter(np.stack(batch).astype(np.float32), np.stack(boxes), np.array(brightness), np.array(contrast), np.stack(noise))
    return out.numpy()


# ----------------------------------------------------------------------------- files


@dataclass
class CachedPart:
    """Cached activations of one split part.

    Attributes:
        folder: the cache folder of this part.
        activations: ``(N, K, *shape)`` float16, memory-mapped read-only.
        labels: ``(N,)`` int32.
        meta: contents of meta.json.
    """

    folder: Path
    activations: np.ndarray
    labels: np.ndarray
    meta: dict

    @property
    def views(self) -> int:
        return int(self.activations.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.activations.nbytes)


def cache_root(runs_root: str | Path) -> Path:
    """``$BREAKHIS_CACHE`` when set, else ``<runs_root>/.cache/activations``."""
    override = os.environ.get("BREAKHIS_CACHE")
    return Path(override).expanduser() if override else Path(runs_root) / ".cache" / "activations"


def images_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """BLAKE2b of the pixels (after loading, stain normalisation and resizing) and the labels."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{images.shape}{images.dtype}".encode())
    flat = images.reshape(len(images), -1) if len(images) else images
    for row in flat:
        digest.update(row.tobytes())
    digest.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return digest.hexdigest()


def part_key(images_hash: str, layer: str, prefix_hash: str, spec: ViewSpec, shape: tuple[int, ...],
             compute_policy: str = "float32") -> str:
    """Folder name of a cache part: a hash of everything its contents depend on.

    ``compute_policy`` is the Keras dtype policy the prefix ran in: bfloat16 activations are not
    float32 ones, so the two never share a part.
    """
    description = {
        "version": CACHE_VERSION, "images": images_hash, "layer": layer, "prefix_weights": prefix_hash,
        "views": spec.to_dict(), "shape": list(shape), "dtype": np.dtype(DTYPE).name,
    }
    if compute_policy != "float32":  # float32 keys stay as they were, so existing caches are reused
        description["compute_policy"] = compute_policy
    return hashlib.blake2b(json.dumps(description, sort_keys=True).encode(), digest_size=12).hexdigest()


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise DiskSpaceError unless ``needed`` bytes plus ``DISK_HEADROOM`` are free where ``folder`` lives."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + DISK_HEADROOM > free:
        raise DiskSpaceError(
            f"the activation cache needs {format_bytes(needed)} ({what}) plus {format_bytes(DISK_HEADROOM)} headroom, "
            f"but only {format_bytes(free)} is free on the disk of {probe}. Free space, point BREAKHIS_CACHE at a "
            f"larger disk, lower --cache-views, or train without the cache (--no-cache). Received: needed={needed} bytes"
        )


PART_NAME = re.compile(r"[0-9a-f]{24}")
"""Folder name of a cache part (:func:`part_key`); nothing else in a cache root is ever deleted."""


def part_folders(root: Path) -> list[Path]:
    """The cache part folders directly in ``root`` (complete or not), sorted by name."""
    if not Path(root).is_dir():
        return []
    return sorted(f for f in Path(root).iterdir() if f.is_dir() and not f.is_symlink() and PART_NAME.fullmatch(f.name))


def folder_bytes(folder: Path) -> int:
    """Bytes of the files directly in ``folder`` (a cache part holds no sub-folders)."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file() and not f.is_symlink())


def remove_parts(folders) -> int:
    """Delete cache part folders (names checked against :data:`PART_NAME`); returns the bytes freed."""
    freed = 0
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir() and not folder.is_symlink() and PART_NAME.fullmatch(folder.name):
            freed += folder_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
    return freed


def open_part(folder: Path) -> CachedPart | None:
    """The complete cache part in ``folder``, or None when it is missing, incomplete or inconsistent."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        shape = tuple(meta["shape"])
        data = folder / "activations.f16"
        if data.stat().st_size != int(np.prod(shape)) * np.dtype(DTYPE).itemsize:
            return None
        labels = np.load(folder / "labels.npy")
        activations = np.memmap(data, dtype=DTYPE, mode="r", shape=shape)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(labels) != shape[0]:
        return None
    return CachedPart(folder, activations, labels, meta)


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files left by a crashed or killed writer (its pid no longer runs)."""
    for tmp in folder.glob("*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass


def _write_array(path: Path, shape: tuple[int, ...], fill: Callable[[np.memmap], None]) -> None:
    """Create a float16 memmap under a temporary name, let ``fill`` write it, fsync, then rename to ``path``."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        array = np.memmap(tmp, dtype=DTYPE, mode="w+", shape=shape)
        fill(array)
        array.flush()
        del array
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _store(out: np.memmap, rows, values: np.ndarray, layer: str) -> None:
    if not np.all(np.abs(values) <= FLOAT16_MAX):
        raise BreakHisError(
            f"activations of {layer} exceed the float16 range of the cache (max |x| = {np.nanmax(np.abs(values)):.3g}); "
            "train without the cache (--no-cache)"
        )
    out[rows] = values.astype(DTYPE)


def build_part(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    spec: ViewSpec,
    prefix,
    layer: str,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    description: dict | None = None,
) -> CachedPart:
    """Compute and store the prefix activations of ``spec.views`` views of every image.

    Args:
        folder: the part's cache folder (created).
        images: ``(N, S, S, 3)`` uint8 RGB.
        labels: ``(N,)`` int labels.
        spec: the views.
        prefix: ``f(float32 (B, S, S, 3)) -> (B, *shape)`` activations (a traced prefix model).
        layer: name of the cached layer (for messages and meta.json).
        batch_size: views per forward pass.
        on_batch: called after each batch with the number of batches written (may raise to cancel).
        description: extra fields for meta.json.

    Returns:
        The complete part, memory-mapped read-only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder)
    pairs = [(i, v) for i in range(len(images)) for v in range(spec.views)]
    jitter = _jitter_fn(images.shape[1]) if spec.augment else None
    first = np.asarray(prefix(make_views(images, pairs[:1], spec, jitter)))
    shape = (len(images), spec.views, *first.shape[1:])

    def fill(out: np.memmap) -> None:
        flat = out.reshape(len(images) * spec.views, *shape[2:])
        for number, start in enumerate(range(0, len(pairs), batch_size), start=1):
            chunk = pairs[start : start + batch_size]
            values = np.asarray(prefix(make_views(images, chunk, spec, jitter)), dtype=np.float32)
            _store(flat, slice(start, start + len(chunk)), values, layer)
            if on_batch is not None:
                on_batch(number)

    _write_array(folder / "activations.f16", shape, fill)
    np.save(folder / "labels.npy", np.asarray(labels, np.int32))
    meta = {"version": CACHE_VERSION, "layer": layer, "shape": list(shape), "dtype": np.dtype(DTYPE).name,
            "views": spec.to_dict(), "bytes": int(np.prod(shape)) * np.dtype(DTYPE).itemsize, **(description or {})}
    write_json_atomic(folder / "meta.json", meta)
    part = open_part(folder)
    assert part is not None, f"cache part just written is unreadable: {folder}"
    return part


def open_features(part: CachedPart, name: str) -> np.ndarray | None:
    """Features ``name`` derived from ``part`` (see :func:`derive_features`), or None when absent."""
    try:
        meta = json.loads((part.folder / f"{name}.json").read_text())
        return np.memmap(part.folder / f"{name}.f16", dtype=DTYPE, mode="r", shape=tuple(meta["shape"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def derive_features(
    part: CachedPart, name: str, fn, batch_size: int, on_batch: Callable[[int], None] | None = None
) -> np.ndarray:
    """Run ``fn`` (e.g. frozen block5 + head pooling) once over every cached view; store and return the result.

    Returns:
        ``(N, K, *out_shape)`` float16, memory-mapped read-only (``<folder>/<name>.f16``).
    """
    found = open_features(part, name)
    if found is not None:
        return found
    _remove_stale_temporaries(part.folder)
    rows = part.activations.reshape(-1, *part.activations.shape[2:])
    first = np.asarray(fn(rows[:1].astype(np.float32)))
    shape = (*part.activations.shape[:2], *first.shape[1:])

    def fill(out: np.memmap) -> None:
        flat = out.reshape(len(rows), *shape[2:])
        for number, start in enumerate(range(0, len(rows), batch_size), start=1):
            values = np.asarray(fn(rows[start : start + batch_size].astype(np.float32)), dtype=np.float32)
            _store(flat, slice(start, start + len(values)), values, name)
            if on_batch is not None:
                on_batch(number)

    _write_array(part.folder / f"{name}.f16", shape, fill)
    write_json_atomic(part.folder / f"{name}.json", {"shape": list(shape), "dtype": np.dtype(DTYPE).name})
    return open_features(part, name)


# ----------------------------------------------------------------------------- feeding


def epoch_draw(n: int, views: int, seed: int, stage: str, epoch: int, training: bool) -> tuple[np.ndarray, np.ndarray]:
    """The order of the images and the view of each in one epoch (deterministic in its arguments).

    Training: a random permutation and a view drawn uniformly per image. Evaluation: in order, view 0.
    """
    if not training:
        return np.arange(n), np.zeros(n, np.int64)
    rng = np.random.default_rng([seed, STAGE_IDS[stage], epoch])
    return rng.permutation(n), rng.integers(0, views, n)


STAGE_IDS = {stage: number for number, stage in enumerate(STAGES, start=1)}
"""Each stage's number in the epoch draws' seed: 1 = frozen, 2 = finetuned (fixed: cached runs reproduce)."""


def feed_dataset(array: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, stage: str,
                 first_epoch: int, last_epoch: int, training: bool, replicas: int = 1):
    """A ``tf.data.Dataset`` of ``(float32 activations, int32 label)`` batches read from a cache array.

    Training: epochs ``first_epoch … last_epoch - 1`` back to back, each a fresh shuffle with one
    view drawn per image (:func:`epoch_draw`); fit it with ``steps_per_epoch`` =
    ``len(batch_bounds(N, batch_size, replicas))`` so that Keras keeps one iterator and the batches
    of epoch e are always the same, resumed or not. Evaluation: one pass in order over view 0.
    """
    import tensorflow as tf

    n = len(labels)
    shape = array.shape[2:]
    epochs = range(first_epoch, last_epoch) if training else range(1)
    bounds = batch_bounds(n, batch_size, replicas)

    def batches():
        for epoch in epochs:
            order, chosen = epoch_draw(n, array.shape[1], seed, stage, epoch, training)
            for start, stop in bounds:
                rows = np.sort(order[start:stop])
                yield array[rows, chosen[rows]].astype(np.float32), labels[rows].astype(np.int32)

    signature = (tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(len(bounds) * len(epochs))).prefetch(2)


def estimate_bytes(n_train: int, n_val: int, views: int, activation_shape: tuple[int, ...]) -> int:
    """Bytes of the activation files of a run (train K views + validation 1 view), float16."""
    return (n_train * views + n_val) * int(np.prod(activation_shape)) * np.dtype(DTYPE).itemsize
