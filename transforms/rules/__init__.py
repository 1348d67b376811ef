"""Transformations: declarative rules from the config, enrichments and the Python UDF hook."""
