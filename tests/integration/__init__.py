"""Integration tests: the pipeline against real local servers (emulators), with faults injected."""
