"""Whole slides: reading them with OpenSlide, tissue detection, tiled prediction, exports, the viewer and slide jobs."""
