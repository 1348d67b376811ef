"""Warehouse: plan Segment-layout rows (pure) and write them (DuckDB, later BigQuery)."""


def split_url(url: str) -> tuple:
    """A --warehouse URL as ("duckdb", PATH) or ("bigquery", PROJECT, DATASET); its form is checked
    where it is given (pipeline/warehouse_url.py). Here, free of Beam, for the job's sink and the
    experiment analysis alike."""
    if url.startswith("duckdb:///"):
        return "duckdb", url[len("duckdb:///"):]
    if url.startswith("bigquery://"):
        project, dataset = url[len("bigquery://"):].split("/", 1)
        return "bigquery", project, dataset
    raise ValueError(f"unsupported warehouse URL {url!r}")
