"""The runs folder: run directories, the registry of runs and models, the active model, progress, import/export, clean-up."""
