"""The origin's reading of a Range header (RFC 9110): one range it serves, anything else ignored."""

import pytest

from amphi.web.origin import _byte_range


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    (b"bytes=0-99", (0, 99)),
    (b"bytes=100-", (100, None)),
    (b"bytes=0-", (0, None)),
    (b"bytes=0-9007199254740991", (0, None)),  # Shaka Player: "to the end, whatever it is"
    (b" bytes=5-5 ", (5, 5)),
    (b"bytes=10-5", None),  # last before first: ignored, the whole is sent
    (b"bytes=-500", None),  # a suffix range: ignored
    (b"bytes=0-1,5-9", None),  # several ranges: ignored
    (b"items=0-1", None),
    (b"bytes=99999999999999-", None),  # absurdly far: not a range we read
])
def test_byte_range(value: bytes | None, expected: tuple[int, int | None] | None) -> None:
    assert _byte_range(value) == expected
