"""Event contracts: JSON Schema tracking plans, checked at launch and enforced per event."""
