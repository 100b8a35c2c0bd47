"""The shared bounded file reader (azext_edgetpm/files.py): at most limit + 1 bytes are read,
and every bad path is one LocalFileError naming the input."""

import pytest

from azext_edgetpm.errors import LocalFileError
from azext_edgetpm.files import read_bounded, read_text_bounded, size_text


def test_reads_a_file_within_its_limit(tmp_path):
    path = tmp_path / "ok.txt"
    path.write_bytes(b"\xef\xbb\xbfhost\n")
    assert read_bounded(str(path), 8, "The file") == b"\xef\xbb\xbfhost\n"
    assert read_text_bounded(str(path), 8, "The file") == "host\n"


@pytest.mark.parametrize("name, expected", [
    ("/dev/zero", "holds more than 1 KiB (it is a device or a pipe"),
    ("big", "holds more than 1 KiB (it is too large)"),
    ("missing", "missing does not exist"),
    (".", "Is a directory"),
    ("a\x00b", "cannot hold a NUL character"),
    ("latin1", "is not UTF-8 text (byte 1 is 0xe9)"),
    ("", "no file name given"),
])
def test_every_bad_file_is_one_error_naming_the_input(tmp_path, name, expected):
    (tmp_path / "big").write_bytes(b"x" * 1025)
    (tmp_path / "latin1").write_bytes(b"h\xe9")
    path = name if name.startswith("/") or name in ("", "a\x00b") else str(tmp_path / name)
    with pytest.raises(LocalFileError) as caught:
        read_text_bounded(path, 1024, "The inventory", field="inventory")
    assert expected in caught.value.message and caught.value.field == "inventory"
    assert "\x00" not in caught.value.message


def test_sizes_read_as_units():
    assert [size_text(n) for n in (1024, 4 * 1024 * 1024, 1000)] == ["1 KiB", "4 MiB", "1,000 bytes"]
