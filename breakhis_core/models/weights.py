"""Starting weights of the VGG16 base: the ImageNet file in the Keras cache, a local file, or none.

The paper's recipe starts from ImageNet. Keras keeps that file as
``$KERAS_HOME/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` (``KERAS_HOME`` defaults to
``~/.keras``) and downloads it once from ``WEIGHTS_URL``. Offline, a lab copies the file there with
:func:`install_imagenet_weights` (CLI: ``breakhis weights install FILE``) or passes it as ``--weights FILE``.

Every file is checked before it is used (:func:`check_vgg16_notop`): a file that is empty, truncated, not
HDF5, a full VGG16 with its classifier, another network or of the wrong shapes is refused with one
:class:`~breakhis_core.errors.WeightsError` that names the file and says what it holds, before a run
folder exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from functools import lru_cache
from pathlib import Path

from breakhis_core.errors import WeightsError

WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
"""Keras' file name of the VGG16 no-top ImageNet weights."""
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + WEIGHTS_FILE
WEIGHTS_MD5 = "6d6bbae143d832006294945121d1f1fc"
"""MD5 Keras checks on download (a re-saved, value-identical file has another digest and is accepted by
:func:`check_vgg16_notop`)."""
DOWNLOAD_TIMEOUT_S = 15
TOP_LAYERS = ("flatten", "fc1", "fc2", "predictions")
"""Layers of VGG16's ImageNet classifier, present in the full (with-top) weights file only."""


def keras_home() -> Path:
    """Keras' folder: ``$KERAS_HOME``, default ``~/.keras``."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def imagenet_weights_cache() -> Path:
    """Where Keras keeps the ImageNet VGG16 (no top) weights file (``$KERAS_HOME/models``, default ``~/.keras/models``)."""
    return keras_home() / "models" / WEIGHTS_FILE


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def vgg16_notop_shapes() -> dict[str, list[tuple[int, ...]]]:
    """``{layer name: [kernel shape, bias shape]}`` of the 13 VGG16 convolutions (input-size independent)."""
    import keras

    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in reference.layers if layer.weights}


def check_vgg16_notop(path: str | Path) -> None:
    """Check that ``path`` holds VGG16 no-top weights (Keras' HDF5 layout, as in ``WEIGHTS_FILE``).

    Files in Keras 3's ``.weights.h5`` layout (no ``layer_names`` attribute) pass the HDF5 check here and
    are checked layer by layer when loaded.

    Raises:
        WeightsError: naming the file and what it holds: missing, empty, not HDF5 (or truncated), a full
            VGG16 with its classifier, another network, or a layer of the wrong shape.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found. Received: weights={path}")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"weights file {path} is empty (0 bytes). Received: weights={path}")
    if not h5py.is_hdf5(path):
        raise WeightsError(f"weights file {path} is not an HDF5 weights file ({size} bytes of another format). "
                           f"Received: weights={path}")
    try:
        with h5py.File(path, "r") as handle:
            names = [_text(name) for name in handle.attrs.get("layer_names", [])]
            shapes = {name: _layer_shapes(handle[name]) for name in names if name in handle}
    except (OSError, KeyError, ValueError) as exc:
        raise WeightsError(f"weights file {path} could not be read ({type(exc).__name__}: {exc}); it may be truncated. "
                           f"Received: weights={path}") from None
    if not names:
        return
    expected = vgg16_notop_shapes()
    top = [name for name in names if name in TOP_LAYERS]
    if top:
        raise WeightsError(f"weights file {path} holds a full VGG16 with its ImageNet classifier ({', '.join(top)}); "
                           f"the base needs the no-top file {WEIGHTS_FILE}. Received: weights={path}")
    missing = [name for name in expected if name not in shapes]
    if missing:
        held = ", ".join(name for name in names if shapes.get(name))[:200] or "no layer with weights"
        raise WeightsError(f"weights file {path} is not VGG16's convolutional base: it lacks {', '.join(missing[:3])}"
                           f"{' …' if len(missing) > 3 else ''} and holds {held}. Received: weights={path}")
    for name, wanted in expected.items():
        if shapes[name] != wanted:
            raise WeightsError(f"weights file {path}: layer {name} has weights of shape {shapes[name]} where VGG16 "
                               f"has {wanted}. Received: weights={path}")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _layer_shapes(group) -> list[tuple[int, ...]]:
    return [tuple(group[_text(name)].shape) for name in group.attrs.get("weight_names", [])]


def imagenet_weights_path() -> Path:
    """Path of the ImageNet VGG16 (no top) weights in the Keras cache, downloading it when missing.

    Raises:
        WeightsError: within ``DOWNLOAD_TIMEOUT_S`` seconds when the file is not cached and cannot be
            downloaded, naming the file and how to supply it offline; or when the cached file is damaged,
            naming the file to delete.
    """
    import keras

    cached = imagenet_weights_cache()
    if cached.is_file():
        try:
            check_vgg16_notop(cached)
        except WeightsError as exc:
            raise WeightsError(f"the Keras cache holds a damaged ImageNet weights file: {exc}. Delete {cached} and "
                               "download it again, or install a good copy with: breakhis weights install FILE") from None
        return cached
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return Path(keras.utils.get_file(WEIGHTS_FILE, WEIGHTS_URL, cache_subdir="models", file_hash=WEIGHTS_MD5))
    except Exception as exc:  # any network, DNS, HTTP or hash failure
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(
            f"ImageNet weights are not cached and could not be downloaded ({reason}). "
            f"Offline: copy {WEIGHTS_FILE} (from {WEIGHTS_URL}) to {cached.parent}/ (breakhis weights install FILE), "
            f"or pass a local file with --weights /path/to/{WEIGHTS_FILE}, or train from scratch with --weights none."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def install_imagenet_weights(source: str | Path, home: str | Path | None = None, link: bool = False) -> Path:
    """Put a VGG16 no-top ImageNet weights file into a Keras cache, so ``weights="imagenet"`` works offline.

    Args:
        source: the file (checked with :func:`check_vgg16_notop` first).
        home: the Keras folder (default :func:`keras_home`); the file goes to ``home/models/WEIGHTS_FILE``.
        link: make a symbolic link instead of a copy (tests and benches, which must not copy 59 MB each time).

    Returns:
        The installed path.

    Raises:
        WeightsError: when ``source`` is not VGG16 no-top weights.
    """
    check_vgg16_notop(source)
    target = Path(home if home is not None else keras_home()) / "models" / WEIGHTS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if link:
        target.symlink_to(Path(source).resolve())
    else:
        partial = target.with_suffix(".partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    return target


def resolve_weights(weights: str | None) -> str | None:
    """Map a weights choice to what the builder loads: None, or a checked local file path.

    Args:
        weights: "imagenet", "none", or a path to a ``.h5`` / ``.weights.h5`` file of the VGG16 conv base.

    Raises:
        WeightsError: for a missing or unfit file, an unknown choice, or ImageNet weights that cannot be had.
    """
    if weights in (None, "", "none", "None"):
        return None
    if weights == "imagenet":
        return str(imagenet_weights_path())
    path = Path(weights).expanduser()
    if not path.name.endswith(".h5"):
        raise WeightsError(f"weights must be imagenet, none or a .h5 / .weights.h5 file. Received: weights={weights}")
    check_vgg16_notop(path)
    return str(path)
