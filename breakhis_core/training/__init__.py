"""Training a classifier into a run directory: the two stages, the activation cache, feeds, callbacks, cross-validation,
scale-out, the background job and the time estimate."""
