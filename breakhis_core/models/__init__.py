"""The classifier: its network and two-stage trainable switch, its starting weights, and safe loading of model files."""
