"""Key <-> path mapping and the object file format (plugins/fslayout.py).

Property-style checks over seeded random keys built from the characters
that matter to the layout (hypothesis is not a dependency).
"""

import os
import random

import pytest

from gateway_plugins import fslayout
from gateway_plugins.fslayout import (
    BUCKET_FILE, LONG_NAME, NAME_FILE, OBJ_SUFFIX, CorruptObject, decode_header, encode_header, escape_segment,
    key_to_relpath, read_header, unescape_segment,
)

# Characters the escaping treats specially, their neighbours, and multi-byte text (no "/": segments never hold it).
ALPHABET = ["%", "%", ".", ".", "\x00", "_", "h", "2", "5", "E", "e", "0", "o", "b", "j", "a", " ", "+",
            "\\", "é", "日", "😀", "\n", "%2E", "%25", "%00", "%h", "%_", "%obj", "..", "~"]
MAX_NAME_BYTES = 255  # what ext4, xfs, btrfs, NFS and SMB allow per path component


def random_segment(rng: random.Random) -> str:
    shape = rng.random()
    if shape < 0.1:
        return rng.choice(["", ".", "..", "...", "%", "%_", "%2E", "%2E%2E", "%obj", "%h", NAME_FILE, BUCKET_FILE])
    length = rng.choice([1, 2, 3, 5, 10, 40, 66, 67, 70, 100, 199, 200, 201, 250, 300, 600])
    return "".join(rng.choice(ALPHABET) for _ in range(length))[:length]


def random_segments(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [random_segment(rng) for _ in range(count)]


def random_keys(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    keys = []
    while len(keys) < count:
        key = "/".join(random_segment(rng) for _ in range(rng.choice([1, 1, 2, 3, 5])))
        if 0 < len(key.encode()) <= 1024:
            keys.append(key)
    return keys


def check_safe_name(name: str) -> None:
    assert name not in ("", ".", ".."), f"{name!r} is not a usable file name"
    assert "/" not in name and "\x00" not in name, f"{name!r} holds a separator or NUL"
    assert len(name.encode()) <= MAX_NAME_BYTES - len(OBJ_SUFFIX), f"{name!r} is too long for a file name"
    assert not name.endswith(OBJ_SUFFIX) and name not in (NAME_FILE, BUCKET_FILE), f"{name!r} looks like a marker"
    name.encode("utf-8")  # never a cut multi-byte character (would raise on surrogates)


@pytest.mark.parametrize("seed", range(4))
def test_escape_round_trips(seed):
    names: dict[str, str] = {}
    for segment in random_segments(3000, seed):
        name = escape_segment(segment)
        check_safe_name(name)
        back = unescape_segment(name)
        if back is None:
            assert "%h" in name and len(segment.encode()) > LONG_NAME // 3, f"{segment!r} hashed without need"
        else:
            assert back == segment, f"{segment!r} -> {name!r} -> {back!r}"
        assert names.setdefault(name, segment) == segment, f"{segment!r} and {names[name]!r} share {name!r}"


def test_escape_examples():
    assert escape_segment("") == "%_"
    assert escape_segment(".") == "%2E" and escape_segment("..") == "%2E%2E"
    assert escape_segment("...") == "..." and escape_segment(".hidden") == ".hidden"
    assert escape_segment("50%") == "50%25" and escape_segment("a\x00b") == "a%00b"
    assert escape_segment("plain name+ü") == "plain name+ü"
    assert unescape_segment("%252E") == "%2E" and unescape_segment("%2500") == "%00"


@pytest.mark.parametrize("seed", range(3))
def test_key_paths_stay_inside_and_are_distinct(seed):
    paths: dict[str, str] = {}
    for key in random_keys(1500, seed):
        relpath = key_to_relpath(key)
        parts = relpath.split("/")
        assert len(parts) == key.count("/") + 1
        assert parts[-1].endswith(OBJ_SUFFIX)
        for name in parts[:-1] + [parts[-1][: -len(OBJ_SUFFIX)]]:
            check_safe_name(name)
        assert not os.path.isabs(relpath) and os.path.normpath(relpath) == relpath, relpath
        assert paths.setdefault(relpath, key) == key, f"{key!r} and {paths[relpath]!r} map to {relpath!r}"


def test_a_and_a_slash_b_do_not_collide():
    assert key_to_relpath("a") == "a%obj"
    assert key_to_relpath("a/b") == "a/b%obj"
    assert key_to_relpath("a/") == "a/%_%obj"
    assert key_to_relpath("a//b") == "a/%_/b%obj"
    assert key_to_relpath("../x") == "%2E%2E/x%obj"
    assert key_to_relpath("/etc/passwd") == "%_/etc/passwd%obj"


@pytest.mark.parametrize("unit", ["x", "é", "😀", "%", "a%", "é%"])
def test_long_segments_are_cut_and_hashed(unit):
    for repeat in range(1, 400, 7):
        segment = unit * repeat
        name = escape_segment(segment)
        escaped_length = len(segment.replace("%", "%25").encode())
        if escaped_length <= LONG_NAME:
            assert unescape_segment(name) == segment
            continue
        assert "%h" in name and unescape_segment(name) is None
        check_safe_name(name)
        head, _, digest = name.rpartition("%h")
        assert len(digest) == 32 and int(digest, 16) >= 0
        # The kept start is the segment's own (escaped) start, never a cut escape.
        assert segment.replace("%", "%25").startswith(head)
        assert unescape_segment(head) == segment[: len(unescape_segment(head))]


def test_long_segments_with_the_same_start_differ():
    base = "same start " * 30
    names = {escape_segment(base + suffix) for suffix in ("", "1", "2", "3", " ")}
    assert len(names) == 5


def test_length_limit_is_in_bytes():
    assert "%h" not in escape_segment("é" * (LONG_NAME // 2))  # exactly LONG_NAME bytes
    assert "%h" in escape_segment("é" * (LONG_NAME // 2) + "x")
    assert "%h" not in escape_segment("x" * LONG_NAME)
    assert "%h" in escape_segment("x" * (LONG_NAME + 1))


# Object file format ---------------------------------------------------------------


def test_header_round_trip():
    meta = {"content_type": "image/jpeg", "metadata": {"note": "ünï \"quoted\""}, "headers": {"expires": "never"}}
    raw = encode_header("a/b ü", 12345, "0" * 32, 1700000000.25, meta, {"CRC32": "AAAAAA=="})
    assert raw[:4] == fslayout.MAGIC
    header, offset = decode_header(raw + b"data after")
    assert offset == len(raw)
    assert header == {"key": "a/b ü", "size": 12345, "etag": "0" * 32, "time": 1700000000.25, "meta": meta,
                      "checksums": {"CRC32": "AAAAAA=="}}


def test_header_padding():
    raw = encode_header("k", 1, "e", 1.0, {}, {}, pad_to=500)
    assert len(raw) == fslayout.PREFIX.size + 500
    header, offset = decode_header(raw + b"x")
    assert header["key"] == "k" and offset == len(raw)
    with pytest.raises(ValueError):
        encode_header("k" * 600, 1, "e", 1.0, {}, {}, pad_to=500)


def test_decode_needs_more_bytes_or_rejects():
    raw = encode_header("key", 0, "e", 0.0, {}, {})
    assert decode_header(raw[:-1]) is None  # caller reads more
    with pytest.raises(CorruptObject):
        decode_header(b"CV")
    with pytest.raises(CorruptObject):
        decode_header(b"XXXX" + raw[4:])


def test_read_header_larger_than_the_first_read(tmp_path):
    meta = {"content_type": "x", "metadata": {f"m{i}": "v" * 100 for i in range(800)}, "headers": {}}
    raw = encode_header("big-header", 3, "e", 0.0, meta, {})
    assert len(raw) > fslayout.FIRST_READ
    path = tmp_path / "obj"
    path.write_bytes(raw + b"abc")
    fd = os.open(path, os.O_RDONLY)
    try:
        header, offset, first = read_header(fd)
    finally:
        os.close(fd)
    assert header["meta"] == meta and offset == len(raw) and first[:offset] == raw


def test_read_header_of_a_truncated_file(tmp_path):
    raw = encode_header("k", 0, "e", 0.0, {"metadata": {"m": "v" * 70000}}, {})
    path = tmp_path / "obj"
    path.write_bytes(raw[:70000])
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(CorruptObject):
            read_header(fd)
    finally:
        os.close(fd)
