"""Showing a user's value inside a message: quoted, control characters made visible, and cut
short, so that a 100 kB argument does not come back 100 kB long in every error (issue 8)."""

ECHO_LIMIT = 60


def shown(value, limit: int = ECHO_LIMIT) -> str:
    """`value` as a quoted literal (NUL and other control characters escaped, as repr does) of
    at most `limit` of its characters; a longer value ends in `…` and says how long it was."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def control_character(value: str):
    """(position, description) of the first control character in `value`, or None."""
    for index, char in enumerate(value or ""):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            name = {"\x00": "a NUL character", "\n": "a line break", "\r": "a carriage return",
                    "\t": "a tab"}.get(char, f"the control character {char!r}")
            return index, name
    return None
