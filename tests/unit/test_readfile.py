"""transforms.readfile: plain local files without Beam, the rest through Beam's FileSystems."""
import gzip

import pytest
from apache_beam.io.filesystem import CompressionTypes

from transforms import readfile

NAMES = ["a.yaml", "a.YAML.GZ", "key", "x.gz", "x.bz2", "x.deflate", "x.zst", "x.zstd", "x.xz", "x.lzma", "x.tar",
         "x.gzip", "x.snappy", "dir.gz/key"]


@pytest.mark.parametrize("name", NAMES)
def test_a_file_beam_would_decompress_stays_with_beam(name):
    compressed = CompressionTypes.detect_compression_type(name) != CompressionTypes.UNCOMPRESSED
    assert readfile.is_plain_local(name) is not compressed


def test_both_ways_read_the_same_bytes(tmp_path):
    plain, packed = tmp_path / "k", tmp_path / "k.gz"
    plain.write_bytes(b"secret\n")
    packed.write_bytes(gzip.compress(b"secret\n"))
    for path in (plain, packed):
        with readfile.open_binary(str(path)) as handle:
            assert handle.read() == b"secret\n"
    assert not readfile.is_plain_local("gs://bucket/k")
