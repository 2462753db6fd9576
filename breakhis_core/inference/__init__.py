"""Diagnosis of images with a trained model: prediction, heat maps, the outputs handed over and the report."""
