"""Starting weights of the classifier's base (its backbone): the ImageNet file in the Keras cache, a local file, or none.

The paper's recipe starts from ImageNet. Keras keeps each backbone's no-top file as
``$KERAS_HOME/models/<Backbone.weights_file>`` (``KERAS_HOME`` defaults to ``~/.keras``; VGG16's is
``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``) and downloads it once from ``Backbone.weights_url``. Offline, a
lab copies the file there with :func:`install_imagenet_weights` (CLI: ``breakhis weights install FILE [--backbone
NAME]``) or passes it as ``--weights FILE``.

Every file is checked against its backbone before it is used (:func:`check_notop_weights`): a file that is empty,
truncated, not HDF5, a full network with its ImageNet classifier, another network (another backbone's file named as
such) or of the wrong shapes is refused with one :class:`~breakhis_core.errors.WeightsError` that names the file and
says what it holds, before a run folder exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from functools import lru_cache
from pathlib import Path

from breakhis_core.errors import WeightsError
from breakhis_core.models.backbones import BACKBONES, VGG16, Backbone

DOWNLOAD_TIMEOUT_S = 15


def keras_home() -> Path:
    """Keras' folder: ``$KERAS_HOME``, default ``~/.keras``."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def imagenet_weights_cache(backbone: Backbone = VGG16) -> Path:
    """Where Keras keeps the backbone's ImageNet no-top weights file (``$KERAS_HOME/models``, default ``~/.keras/models``)."""
    return keras_home() / "models" / backbone.weights_file


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def notop_shapes(backbone: Backbone) -> tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]:
    """``(layer name, weight shapes)`` of the backbone's layers with weights, in the order Keras loads an HDF5 file
    into them (input-size independent)."""
    reference = backbone.network(weights=None, input_shape=(backbone.min_input_size, backbone.min_input_size, 3))
    return tuple((layer.name, tuple(tuple(w.shape) for w in layer.weights)) for layer in reference.layers if layer.weights)


def check_notop_weights(path: str | Path, backbone: Backbone = VGG16) -> None:
    """Check that ``path`` holds the backbone's no-top weights (Keras' HDF5 layout, as in ``Backbone.weights_file``).

    The file's layers with weights must match the backbone's in order and shape (how Keras loads the file). Files in
    Keras 3's ``.weights.h5`` layout (no ``layer_names`` attribute) pass the HDF5 check here and are checked layer by
    layer when loaded.

    Raises:
        WeightsError: naming the file and what it holds: missing, empty, not HDF5 (or truncated), a full
            network with its classifier, another backbone's weights (named), another network, or a layer of the
            wrong shape.
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
    top = [name for name in names if name in backbone.top_layers]
    if top:
        raise WeightsError(f"weights file {path} holds a full {backbone.label} with its ImageNet classifier "
                           f"({', '.join(top)}); the base needs the no-top file {backbone.weights_file}. "
                           f"Received: weights={path}")
    held = [(name, tuple(shapes[name])) for name in names if shapes.get(name)]
    expected = notop_shapes(backbone)
    if [shape for _, shape in held] == [shape for _, shape in expected]:
        return
    other = next((b for b in BACKBONES.values() if b != backbone
                  and [shape for _, shape in held] == [shape for _, shape in notop_shapes(b)]), None)
    if other is not None:
        raise WeightsError(f"weights file {path} holds {other.label}'s no-top weights, not {backbone.label}'s: choose "
                           f"backbone {other.name}, or give {backbone.label}'s file {backbone.weights_file}. "
                           f"Received: weights={path}, backbone={backbone.name}")
    expected_names = {name for name, _ in expected}
    missing = [name for name, _ in expected if name not in shapes]
    if len(held) != len(expected) or missing:
        listed = ", ".join(name for name, _ in held)[:200] or "no layer with weights"
        lacking = f"it lacks {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''} and " if missing else ""
        raise WeightsError(f"weights file {path} is not {backbone.label}'s convolutional base: {lacking}holds "
                           f"{len(held)} layers with weights where {backbone.label} has {len(expected)} ({listed}). "
                           f"Received: weights={path}")
    for (name, shape), (wanted_name, wanted) in zip(held, expected):
        if shape != wanted:
            where = name if name == wanted_name or name in expected_names else f"{name} ({wanted_name})"
            raise WeightsError(f"weights file {path}: layer {where} has weights of shape {list(shape)} where "
                               f"{backbone.label} has {list(wanted)}. Received: weights={path}")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _layer_shapes(group) -> list[tuple[int, ...]]:
    return [tuple(group[_text(name)].shape) for name in group.attrs.get("weight_names", [])]


def imagenet_weights_path(backbone: Backbone = VGG16) -> Path:
    """Path of the backbone's ImageNet no-top weights in the Keras cache, downloading it when missing.

    Raises:
        WeightsError: within ``DOWNLOAD_TIMEOUT_S`` seconds when the file is not cached and cannot be
            downloaded, naming the file and how to supply it offline; or when the cached file is damaged,
            naming the file to delete.
    """
    import keras

    cached = imagenet_weights_cache(backbone)
    if cached.is_file():
        try:
            check_notop_weights(cached, backbone)
        except WeightsError as exc:
            raise WeightsError(f"the Keras cache holds a damaged ImageNet weights file: {exc}. Delete {cached} and "
                               "download it again, or install a good copy with: breakhis weights install FILE") from None
        return cached
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return Path(keras.utils.get_file(backbone.weights_file, backbone.weights_url, cache_subdir="models",
                                         file_hash=backbone.weights_md5))
    except Exception as exc:  # any network, DNS, HTTP or hash failure
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(
            f"{backbone.label}'s ImageNet weights are not cached at {cached} and could not be downloaded ({reason}). "
            f"Offline: copy {backbone.weights_file} (from {backbone.weights_url}) to {cached.parent}/ (breakhis weights "
            f"install FILE --backbone {backbone.name}), or pass a local file with --weights "
            f"/path/to/{backbone.weights_file}, or train from scratch with --weights none."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def install_imagenet_weights(source: str | Path, home: str | Path | None = None, link: bool = False,
                             backbone: Backbone = VGG16) -> Path:
    """Put a backbone's no-top ImageNet weights file into a Keras cache, so ``weights="imagenet"`` works offline.

    Args:
        source: the file (checked with :func:`check_notop_weights` first).
        home: the Keras folder (default :func:`keras_home`); the file goes to ``home/models/<Backbone.weights_file>``.
        link: make a symbolic link instead of a copy (tests and benches, which must not copy 59 MB each time).
        backbone: whose weights they are.

    Returns:
        The installed path.

    Raises:
        WeightsError: when ``source`` is not the backbone's no-top weights.
    """
    check_notop_weights(source, backbone)
    target = Path(home if home is not None else keras_home()) / "models" / backbone.weights_file
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


def resolve_weights(weights: str | None, backbone: Backbone = VGG16) -> str | None:
    """Map a weights choice to what the builder loads: None, or a checked local file path.

    Args:
        weights: "imagenet", "none", or a path to a ``.h5`` / ``.weights.h5`` file of the backbone's conv base.
        backbone: the network the weights are for.

    Raises:
        WeightsError: for a missing or unfit file, an unknown choice, or ImageNet weights that cannot be had.
    """
    if weights in (None, "", "none", "None"):
        return None
    if weights == "imagenet":
        return str(imagenet_weights_path(backbone))
    path = Path(weights).expanduser()
    if not path.name.endswith(".h5"):
        raise WeightsError(f"weights must be imagenet, none or a .h5 / .weights.h5 file. Received: weights={weights}")
    check_notop_weights(path, backbone)
    return str(path)
