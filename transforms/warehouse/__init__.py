"""Warehouse: plan Segment-layout rows (pure) and write them (DuckDB, later BigQuery)."""
