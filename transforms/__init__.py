"""DoFns and composite PTransforms, one concern per module."""
