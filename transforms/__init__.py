"""DoFns and composite PTransforms, one concern per module."""
# The release, stamped on dead letters and outgoing requests. It lives here, not in pipeline/,
# because transforms/ never imports pipeline/ (pipeline/ re-exports it); setup.py reads it.
__version__ = "0.1.0"
