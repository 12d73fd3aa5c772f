"""Prediction monitoring: the custom metrics of the ensemble's python steps and `triton-deploy monitor`."""
