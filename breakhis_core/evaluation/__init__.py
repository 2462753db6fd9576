"""How good a model is: metrics with patient-resampled intervals, calibration and the operating point, the learning check."""
