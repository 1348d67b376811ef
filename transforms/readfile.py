"""Opening a file the user named (a config, a secret), local or on any filesystem Beam knows.

A plain local file is opened with open(): importing Beam's FileSystems loads all of Apache
Beam (about 1 s and 100 MB), which the collector's sink modes (`serve --sink ...`, the Cloud
Run container) otherwise never need. Anything else (gs://, or a compressed local file, which
FileSystems decompresses by its suffix) still goes through FileSystems, as before.
"""

# Beam's CompressionTypes.detect_compression_type suffixes (tests/unit/test_readfile.py checks
# they are the same): such a file is read decompressed, so it stays with FileSystems.
COMPRESSED_SUFFIXES = (".bz2", ".deflate", ".gz", ".zst", ".zstd", ".xz", ".lzma")


def is_plain_local(path: str) -> bool:
    return "://" not in path and not path.lower().endswith(COMPRESSED_SUFFIXES)


def open_binary(path: str):
    """A binary file object for reading `path` (a context manager, as FileSystems.open's)."""
    if is_plain_local(path):
        return open(path, "rb")
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.open(path)
