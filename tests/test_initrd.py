"""vmm/initrd.py: the boot archive format."""
import struct

import pytest
from hypothesis import given, strategies as st

from vmm import abi, initrd
from vmm.initrd import InitrdError, entries, pack, parse

names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                min_size=1, max_size=31)


@given(st.dictionaries(names, st.binary(max_size=300), max_size=8))
def test_round_trip(files):
    a = pack(files)
    assert parse(a) == files
    es = entries(a)
    assert [e.name for e in es] == list(files)
    for e in es:
        assert e.offset % 16 == 0
        assert e.offset >= 16 + 48 * len(files)


def test_layout():
    a = pack({"init": b"abc", "xsh": b"0123456789abcdefg"})
    magic, count = struct.unpack_from("<QQ", a, 0)
    assert magic == abi.INITRD_MAGIC and count == 2
    name, off, size = struct.unpack_from("<32sQQ", a, 16)
    assert name == b"init" + bytes(28) and size == 3 and off == 16 + 2 * 48
    assert a[off:off + 3] == b"abc"
    name, off2, size = struct.unpack_from("<32sQQ", a, 16 + 48)
    assert name.rstrip(b"\0") == b"xsh" and off2 == off + 16 and size == 17


@pytest.mark.parametrize("name,msg", [
    ("", "non-empty"), ("x" * 32, "at most 31"), ("caf\u00e9", "not ASCII"),
    ("a b", "printable"), ("a\0b", "printable"),
])
def test_bad_names(name, msg):
    with pytest.raises(InitrdError, match=msg):
        pack({name: b""})


def test_duplicate_names():
    with pytest.raises(InitrdError, match="duplicate"):
        pack([("a", b"1"), ("a", b"2")])


def test_31_byte_name_ok():
    assert parse(pack({"x" * 31: b"z"})) == {"x" * 31: b"z"}


def corrupt(a: bytes, off: int, fmt: str, value) -> bytes:
    b = bytearray(a)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


GOOD = pack({"init": b"I" * 40, "hello": b"H" * 5})


@pytest.mark.parametrize("data,msg", [
    (b"", "shorter than"),
    (b"\0" * 16, "bad magic"),
    (corrupt(GOOD, 8, "<Q", 1000), "table of 1000 entries"),
    (corrupt(GOOD, 8, "<Q", 1 << 40), "exceeds"),
    (corrupt(GOOD, 16 + 32, "<Q", 0x1000), "runs past"),
    (corrupt(GOOD, 16 + 40, "<Q", 1 << 20), "runs past"),
    (corrupt(GOOD, 16 + 32, "<Q", 0x71), "aligned"),
    (corrupt(GOOD, 16 + 32, "<Q", 0x10), "inside the table"),
    (corrupt(GOOD, 16, "32s", b"x" * 32), "NUL-terminated"),
    (corrupt(GOOD, 16, "32s", b"in\0it"), "garbage"),
    (corrupt(GOOD, 16, "32s", b"\xff\xfe"), "not ASCII"),
    (corrupt(GOOD, 16, "32s", b""), "non-empty"),
    (corrupt(GOOD, 16 + 48, "32s", b"init"), "duplicate"),
    (GOOD[:100], "needs 112 bytes"),
    (GOOD[:-1], "runs past"),
])
def test_corrupt_archives(data, msg):
    with pytest.raises(InitrdError, match=msg):
        parse(data)


def test_errors_are_value_errors():
    assert issubclass(initrd.InitrdError, ValueError)
