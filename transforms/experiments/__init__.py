"""Experiments: the exposures stage and the experiments section of the config."""
