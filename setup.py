"""Sluice: a Segment-compatible event pipeline on Apache Beam."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "transforms" / "__init__.py").read_text()).group(1)

# Runtime dependencies are pinned exactly: Dataflow workers install from this list
# (--setup_file), so a worker must get what the tests ran against.
# constraints.txt pins the transitive set for `make` installs.
INSTALL_REQUIRES = [
    "apache-beam==2.77.0",
    "duckdb==2.0.0",
    "google-cloud-bigquery==3.47.0",  # Sluice's own BigQuery sink (Beam's has no endpoint setting)
    "google-cloud-pubsub==2.44.0",    # Beam's ReadFromPubSub / WriteToPubSub (streaming input, dead-letter topic)
    "google-cloud-storage==3.17.1",   # Beam's gs:// filesystem (inputs, configs, contracts, salts)
    "jsonschema==4.26.0",       # the reference validator: explains every violation
    "jsonschema-rs==0.60.3",    # the compiled validator on the hot path (see issue 3's benchmark)
    "httptools==0.9.0",         # uvicorn's C HTTP parser (the collector's hot path)
    "orjson==3.13.0",
    "prometheus-client==0.26.0",  # the collector's GET /metrics
    "pyarrow==25.0.1",
    "PyYAML==6.0.3",
    "pytz==2026.6",  # DuckDB needs it to hand TIMESTAMPTZ values to Python
    "scipy==1.17.1",  # experiment statistics (analysis/stats.py); 1.18 needs Python 3.12
    "ua-parser==1.0.2",             # user-agent enrichment, offline rules
    "ua-parser-builtins==202610",   # the rules themselves, shipped in the wheel
    "ua-parser-rs==0.1.5",          # compiled matcher: 19 us a parse against 1 ms for pure Python
    "uvicorn==0.54.0",          # the collector's ASGI server (benchmarks/collector.py against granian)
    "uvloop==0.23.0",           # its event loop
]

setup(
    name="sluice",
    version=VERSION,
    description="Segment-compatible events into warehouse tables, with dead letters and a reconciliation summary",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline", "pipeline.*", "collector", "collector.*",
                                    "transforms", "transforms.*", "analysis", "analysis.*", "schemas"]),
    package_data={"schemas": ["*.json"], "collector.debugger.page": ["*.html", "*.css", "*.js"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest==9.2.0", "hypothesis==6.170.15",
                             "pytest-xdist==3.8.0",  # make test-fast runs on both cores
                             "mypy==2.4.1",  # type-checks the generated tracking code
                             "gcp-storage-emulator==2026.7.19",  # gs:// backfills, started by the tests
                             # the real SDKs users send with, pointed at the collector by the tests
                             "segment-analytics-python==2.4.0", "rudder-sdk-python==2.1.9",
                             # a real flag SDK assigns the experiment test's users (features inline, no API host)
                             "growthbook==4.0.0",
                             "playwright==1.65.2",  # drives Debian's chromium (analytics.js in a browser)
                             "granian==2.8.7"]},  # the other ASGI server benchmarks/collector.py measures
    entry_points={"console_scripts": ["sluice = pipeline.__main__:main"]},  # serve without Beam
)
