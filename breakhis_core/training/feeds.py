"""The two data feeds of a training stage: what ``model.fit`` trains on (:class:`FitInputs`).

- :class:`PlainFeed` (the plain path, ``cache="off"`` or a GPU): the classifier on the images, augmented on the fly.
- :class:`CachedFeed` (the cached path, ``cache="auto"`` on a CPU): sub-models of the classifier on cached activations
  of its frozen VGG16 prefix (``cache.py``), computed once per run, or found on disk, when a stage first asks.

Both give the same models and run files; ``train.py`` picks one per run (run.json "training_path").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from breakhis_core.config import TrainConfig
from breakhis_core.data.arrays import ImageArrays
from breakhis_core.training.distribute import batch_bounds
from breakhis_core.files import format_bytes
from breakhis_core.models.backbones import HEAD_FIRST_LAYER, get_backbone
from breakhis_core.runs.progress import TrainingProgress
from breakhis_core.runs.rundir import RunDir, now_iso

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


class CachingCancelled(Exception):
    """Raised when the cancel file appears outside ``model.fit``, while the cached feed builds its activations."""


@dataclass(frozen=True)
class FitInputs:
    """What a feed gives ``model.fit`` for one stage; :meth:`fit` makes the call.

    Attributes:
        model: the model to fit: the classifier itself (plain path) or a compiled sub-model sharing its layers and
            optimizer (cached path), so that fitting it trains the classifier.
        train_data: ``tf.data.Dataset`` of ``(inputs, labels)`` batches: images ``(B, S, S, 3)`` float32 RGB in
            [0, 255] (plain) or cached activations / head inputs float32 (cached); labels ``(B,)`` int32. Shuffled
            and augmented by the dataset itself.
        validation_data: the validation split's batches in the same form, or None when the run has no validation split.
        batches: training batches per epoch (progress and ETA).
        steps_per_epoch: ``batches`` when ``train_data`` holds every epoch left back to back (cached path), None when
            it ends after one epoch (plain path).
        class_weight: class → loss weight (``data.class_weights``), or None for unweighted loss.
    """

    model: keras.Model
    train_data: tf.data.Dataset
    validation_data: tf.data.Dataset | None
    batches: int
    steps_per_epoch: int | None
    class_weight: dict[int, float] | None

    def fit(self, epochs: int, initial_epoch: int, callbacks: list[keras.callbacks.Callback]) -> None:
        """``model.fit`` from ``initial_epoch`` (epochs done, 0-based) to ``epochs`` (the stage's total), silently."""
        self.model.fit(
            self.train_data, validation_data=self.validation_data, epochs=epochs, initial_epoch=initial_epoch,
            steps_per_epoch=self.steps_per_epoch, class_weight=self.class_weight, callbacks=callbacks, verbose=0,
            shuffle=False,  # the datasets shuffle themselves
        )


class Feed(Protocol):
    """What a stage needs of a feed (:class:`PlainFeed`, :class:`CachedFeed`)."""

    multiworker: bool
    """Whether the run trains under the multi-worker strategy (the fitted model gets ``distribute``'s hooks)."""

    def fit_inputs(self, stage: str, model: keras.Model, initial_epoch: int, epochs: int) -> FitInputs:
        """The inputs to fit ``model`` in ``stage`` (a name of ``config.STAGES``) from ``initial_epoch`` to ``epochs``."""


class PlainFeed:
    """The plain path: ``model.fit`` on the images, augmented on the fly (``--no-cache``).

    Args:
        train_ds: the training split's ``data.make_dataset`` (shuffled, augmented, one epoch).
        val_ds: the validation split's ``data.make_dataset``, or None without a validation split.
        class_weight: class → loss weight, or None.
        multiworker: whether the run trains under the multi-worker strategy.
    """

    def __init__(self, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset | None, class_weight: dict[int, float] | None,
                 multiworker: bool = False):
        self.train_ds, self.val_ds, self.class_weight = train_ds, val_ds, class_weight
        self.multiworker = multiworker

    def fit_inputs(self, stage: str, model: keras.Model, initial_epoch: int, epochs: int) -> FitInputs:
        return FitInputs(model, self.train_ds, self.val_ds, int(self.train_ds.cardinality()), None, self.class_weight)


class CachedFeed:
    """The cached path: sub-models of the classifier trained on cached prefix activations (see ``cache.py``).

    The activations of the frozen prefix are computed (or found on disk) the first time a stage
    asks for them, with the prefix weights of the model it brings; stage 1 trains the head on
    features derived once from them, stage 2 trains the stage-2 trainable layers + head on them.

    Args:
        run_dir: the run directory (run.json "cache" is written; its cancel file is watched while caching).
        config: the run's configuration (``cache_views``, ``augment``, ``seed``, ``stage2_unfreeze``, ``strategy``).
        train: the training split's images and labels (``data.load_arrays``); ``cache_views`` augmented views each
            (one plain view without ``augment``).
        val: the validation split's images and labels (one plain view each; none when the split is empty).
        class_weight: class → loss weight, or None.
        batch_size: the global batch (``TrainConfig.batch_size`` × ``replicas``).
        replicas: replicas of the distribution strategy.
        progress: the run's progress (caching passes report as stage "caching").
        info: the run.json dict (updated and written).
        cache_folder: where the cache parts go; default the runs folder's (``cache.cache_root``).
    """

    def __init__(self, run_dir: Path, config: TrainConfig, train: ImageArrays, val: ImageArrays, class_weight,
                 batch_size: int, replicas: int, progress: TrainingProgress, info: dict, cache_folder: Path | None = None):
        self.run_dir, self.config, self.replicas = run_dir, config, replicas
        self.splits = {"train": train, "val": val}
        self.cache_folder = cache_folder
        self.multiworker = config.strategy == "multiworker"
        self.class_weight, self.batch_size, self.progress, self.info = class_weight, batch_size, progress, info
        self.parts: dict | None = None
        self.layer: str | None = None

    # ------------------------------------------------------------------ caching

    def _check_cancel(self) -> None:
        if RunDir(self.run_dir).cancel_requested():
            raise CachingCancelled()

    def _ensure_parts(self, model) -> None:
        """Find or build the activation files of the train (K views) and val (1 view) images."""
        import keras
        import tensorflow as tf

        from breakhis_core.training import cache

        layer = get_backbone(self.config.backbone).cache_split_layer(self.config.stage2_unfreeze)
        if self.parts is not None and layer == self.layer:
            return
        root = self.cache_folder or cache.cache_root(self.run_dir.parent)
        prefix = cache.prefix_model(model, layer)
        prefix_hash = cache.weights_digest(prefix.layers)
        shape = tuple(int(d) for d in prefix.output.shape[1:])
        augment = self.config.augment
        specs = {"train": cache.ViewSpec(self.config.cache_views if augment else 1, augment, self.config.seed),
                 "val": cache.ViewSpec(1, False, self.config.seed)}
        plans, parts, todo = {}, {}, []
        for name, spec in specs.items():
            images, labels = self.splits[name].images, self.splits[name].labels
            if not len(images):
                continue
            key = cache.part_key(cache.images_digest(images, labels), layer, prefix_hash, spec, shape,
                                 keras.config.dtype_policy().name)
            plans[name] = (root / key, spec, images, labels)
            parts[name] = cache.open_part(root / key)
            if parts[name] is None:
                todo.append(name)
        head_inputs = int(np.prod(model.get_layer(HEAD_FIRST_LAYER).output.shape[1:]))  # stage 1's derived features
        per_view = (int(np.prod(shape)) + head_inputs) * np.dtype(cache.DTYPE).itemsize
        needed = sum(len(plans[n][2]) * plans[n][1].views * per_view for n in todo)
        views = specs["train"].views
        what = (f"{len(self.splits['train'].images)} training images × {views} view{'s' if views > 1 else ''} + "
                f"{len(self.splits['val'].images)} validation images, {'×'.join(map(str, shape))} activations + "
                f"{head_inputs} head inputs per view, float16")
        if todo:
            cache.check_free_space(root, needed, what)
        size = sum(len(plans[n][2]) * plans[n][1].views * per_view for n in plans)
        self.info["cache"] = {"layer": layer, "views": views, "folder": str(root), "bytes": size,
                              "size": format_bytes(size), "reused": not todo, "contents": what,
                              "parts": {name: plan[0].name for name, plan in plans.items()}}
        RunDir(self.run_dir).write_info(self.info)
        if todo:
            forward = tf.function(lambda x: prefix(x, training=False), reduce_retracing=True)
            total = sum(-(-len(plans[n][2]) * plans[n][1].views // self.batch_size) for n in todo)
            started, done_before = time.monotonic(), 0
            for name in todo:
                folder, spec, images, labels = plans[name]

                def on_batch(number, name=name, done_before=done_before):
                    done = done_before + number
                    rate = (time.monotonic() - started) / done
                    self.progress.update(
                        stage="caching", epoch=0, epochs=0, batch=done, batches=total, eta_s=round(rate * (total - done), 1),
                        message=f"caching {layer} activations ({format_bytes(needed)}): {name} batch {done}/{total}")
                    self._check_cancel()

                self.progress.update(force=True, stage="caching", epoch=0, epochs=0, batch=done_before, batches=total,
                                     message=f"caching {layer} activations of {what}: {format_bytes(needed)} in {root}")
                parts[name] = cache.build_part(folder, images, labels, spec, forward, layer, self.batch_size, on_batch,
                                               {"run_id": self.run_dir.name, "created": now_iso()})
                done_before += -(-len(images) * spec.views // self.batch_size)
            self.info["cache"]["seconds"] = round(time.monotonic() - started, 1)
            RunDir(self.run_dir).write_info(self.info)
        self.parts, self.layer = parts, layer

    def _features(self, model) -> dict:
        """Stage 1's head inputs: the frozen layers after the cached one up to ``head_pool``, run once per view."""
        import tensorflow as tf

        from breakhis_core.training import cache

        segment = cache.suffix_model(model, self.layer, HEAD_FIRST_LAYER)
        name = "features-" + cache.weights_digest(segment.layers)[:16]
        forward = tf.function(lambda a: segment(a, training=False), reduce_retracing=True)
        features, started = {}, time.monotonic()
        for part_name, part in self.parts.items():
            total = -(-len(part.labels) * part.views // self.batch_size)

            def on_batch(number, part_name=part_name, total=total):
                self.progress.update(stage="caching", epoch=0, epochs=0, batch=number, batches=total,
                                     message=f"caching head inputs of stage 1: {part_name} batch {number}/{total}")
                self._check_cancel()

            features[part_name] = cache.derive_features(part, name, forward, self.batch_size, on_batch)
        self.info["cache"]["features_seconds"] = round(time.monotonic() - started, 1)
        RunDir(self.run_dir).write_info(self.info)
        return features

    # ------------------------------------------------------------------ fitting

    def fit_inputs(self, stage: str, model: keras.Model, initial_epoch: int, epochs: int) -> FitInputs:
        from breakhis_core.training import cache

        self._ensure_parts(model)
        if stage == "frozen":
            arrays, start = self._features(model), HEAD_FIRST_LAYER
        else:
            arrays, start = {name: part.activations for name, part in self.parts.items()}, self.layer
        sub = cache.suffix_model(model, start)
        # The sub-model shares the classifier's layers and its optimizer (whose state the full
        # model's checkpoints keep); loss and metrics as in model.compile_model. Its train step is
        # XLA-compiled without a distribution strategy (Keras' "auto" leaves XLA off on CPU-only
        # machines): block5 + head at batch 32 train ~1.5x faster on a 2-core CPU (README, "Performance").
        sub.compile(optimizer=model.optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                    jit_compile=True if self.config.strategy == "default" else "auto")
        labels = {name: part.labels for name, part in self.parts.items()}
        batches = len(batch_bounds(len(labels["train"]), self.batch_size, self.replicas))
        train = cache.feed_dataset(arrays["train"], labels["train"], self.batch_size, self.config.seed, stage,
                                   initial_epoch, epochs, True, self.replicas)
        val = None
        if "val" in arrays:
            val = cache.feed_dataset(arrays["val"], labels["val"], self.batch_size, self.config.seed, stage, 0, 1,
                                     False, self.replicas)
        return FitInputs(sub, train, val, batches, batches, self.class_weight)
