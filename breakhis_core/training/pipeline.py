"""The tf.data pipeline of a training stage (uncached path) and the class weights of its loss."""

from __future__ import annotations

import numpy as np


def class_weights(labels: np.ndarray, n_classes: int = 2) -> dict[int, float]:
    """Inverse-frequency weights ``n / (K * n_c)`` of the K classes (BreakHis 2,480 benign / 5,429 malignant →
    1.59 / 0.73); a class absent from ``labels`` weighs 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    total = counts.sum()
    return {c: float(total / (n_classes * counts[c])) if counts[c] else 0.0 for c in range(n_classes)}


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    training: bool,
    augment_images: bool = False,
    seed: int = 0,
    replicas: int = 1,
):
    """A batched, prefetched ``tf.data.Dataset`` of ``(float32 RGB [0, 255], int32 label)``.

    Shuffling and augmentation apply only when ``training``; the model does its backbone's
    preprocessing, so images stay RGB in [0, 255] here. Batches follow
    ``distribute.batch_bounds(len(images), batch_size, replicas)``: with several replicas no
    replica ever gets an empty share and the first batch divides evenly among them.
    """
    import tensorflow as tf

    from breakhis_core.data.augment import augment
    from breakhis_core.training.distribute import batch_bounds

    bounds = batch_bounds(len(images), batch_size, replicas, "training images" if training else "validation images")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    sizes = [stop - start for start, stop in bounds]
    if all(size == batch_size for size in sizes[:-1]) and sizes[-1] <= batch_size:
        dataset = dataset.batch(batch_size)
    else:
        starts = tf.constant([start for start, _ in bounds], tf.int64)
        window_sizes = tf.constant(sizes, tf.int64)
        dataset = dataset.enumerate().group_by_window(
            key_func=lambda i, item: tf.searchsorted(starts, [i], side="right", out_type=tf.int64)[0] - 1,
            reduce_func=lambda key, window: window.batch(max(sizes)),
            window_size_func=lambda key: tf.gather(window_sizes, key),
        ).map(lambda i, item: item)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(bounds)))
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment_images:
        counter = tf.data.Dataset.counter()
        dataset = tf.data.Dataset.zip((dataset, counter)).map(
            lambda xy, i: (augment(xy[0], tf.stack([tf.cast(seed, tf.int64), i])), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
