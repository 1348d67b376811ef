"""Sluice pipeline: options, config, graph builder and entry point."""
__version__ = "0.1.0"
