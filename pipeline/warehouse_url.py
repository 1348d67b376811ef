"""--warehouse and --bigquery_endpoint checked without Apache Beam: the job (pipeline/options.py),
`pipeline.query` and `experiments` share these, and the last two never import Beam."""
import re

from pipeline.errors import UsageError

# Project ids: 6-30 of [a-z0-9-] (or domain-scoped, example.com:project); datasets: [A-Za-z0-9_].
_BIGQUERY_URL = re.compile(r"bigquery://((?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9])/([A-Za-z0-9_]{1,1024})")


def parse_warehouse_url(url: str) -> str:
    """Check a --warehouse URL; return its kind."""
    if url.startswith("duckdb:///") and len(url) > len("duckdb:///"):
        return "duckdb"
    if url.startswith("duckdb:"):
        raise UsageError(f"--warehouse {url!r}: write duckdb:///relative/path.duckdb or "
                         "duckdb:////absolute/path.duckdb")
    if url.startswith("bigquery:"):
        match = _BIGQUERY_URL.fullmatch(url)
        if not match:
            raise UsageError(f"--warehouse {url!r}: write bigquery://PROJECT/DATASET (a project id, and a dataset "
                             "name of letters, digits and underscores)")
        return "bigquery"
    raise UsageError(f"--warehouse {url!r}: expected duckdb:///PATH or bigquery://PROJECT/DATASET")


def check_endpoint(url):
    """--bigquery_endpoint: an http(s) URL with a host, or None."""
    if url is None:
        return None
    if not re.fullmatch(r"https?://[^/\s]+/?", url):
        raise UsageError(f"--bigquery_endpoint {url!r}: expected a URL such as http://127.0.0.1:9050")
    return url.rstrip("/")
