"""Experiment analysis: exposures and metric events read from the warehouse, compared per variation.

Never imports pipeline/ (the pipeline's CLIs import this package).
"""
