"""Text from outside (file names, error messages, URLs) shown as data, never as instructions.

A file name is chosen by whoever made the file: printed raw it can carry Rich markup (``[/x]``
crashes the console, ``[link=…]`` forges a hyperlink), terminal escape codes, or a newline that
forges a whole summary line; written raw to CSV, ``=1+2`` becomes a spreadsheet formula. Every
place the CLI shows such text goes through one of these functions.
"""

import re
from typing import Any

from rich.markup import escape

# C0 and C1 control characters and DEL: ESC starts terminal codes, CR/LF break lines, the rest
# ring bells or move the cursor. Tab too, so a table column cannot be shifted.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Unicode's own line and paragraph separators and the bidirectional overrides, which reorder what
# the reader sees ("evil\u202egnp.wav" looks like "evilvaw.png").
_INVISIBLE = re.compile(r"[\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# OWASP's list of characters a spreadsheet treats as the start of a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(text: Any) -> str:
    """``text`` with control and invisible characters shown as ``\\x1b``-style escapes: for
    outputs that are not Rich markup (click.echo, JSON-free plain lines)."""
    text = str(text)
    # Surrogate escapes (undecodable bytes of a non-UTF-8 name) would fail on print.
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _INVISIBLE.sub(_visible, _CONTROL.sub(_visible, text))


def name(text: Any) -> str:
    """``text`` ready to embed in a Rich markup string: control characters made visible and
    markup escaped, so it is shown exactly as one line of data."""
    return escape(plain(text))


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not evaluate: text starting like a formula gets a leading
    single quote (OWASP's advice); numbers and None pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


# Query parameters that carry credentials (libpq's password and sslpassword, tokens, keys).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)
_MASK = "***"


def url(value: str | None) -> str:
    """A database or broker URL with every credential masked (the userinfo password, and any
    password-like query parameter such as ``?password=``), fit to print."""
    if not value:
        return ""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(value)
        query = {
            key: (_MASK if _SECRET_KEY.search(key) else item) for key, item in parsed.query.items()
        }
        shown = parsed.set(query=query).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse (a bad port, an odd scheme)
        from kombu.utils.url import maybe_sanitize_url

        try:
            shown = maybe_sanitize_url(value, mask=_MASK)
        except Exception:  # nor kombu: the patterns below still mask it
            shown = value
    return plain(scrub(_mask_by_pattern(shown), value))


def _mask_by_pattern(text: str) -> str:
    """Masking that needs no parser, for what neither SQLAlchemy nor kombu could parse."""
    text = re.sub(r"(://[^/@:?#\s]*:)[^/@?#\s]*@", rf"\g<1>{_MASK}@", text)
    return re.sub(
        r"([?&;][^=&;#\s]*(?:pass|pwd|secret|token|key|auth|credential)[^=&;#\s]*=)[^&;#\s]*",
        rf"\g<1>{_MASK}",
        text,
        flags=re.IGNORECASE,
    )


def _secrets(value: str) -> list[str]:
    from urllib.parse import parse_qsl, unquote, urlsplit

    found: list[str] = []
    try:
        parts = urlsplit(value)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += [item for key, item in parse_qsl(parts.query) if _SECRET_KEY.search(key)]
    except ValueError:
        pass
    match = re.search(r"://[^/@:?#\s]*:([^/@?#\s]+)@", value)
    if match:
        found.append(match.group(1))
    return sorted({secret for secret in found if len(secret) >= 3}, key=len, reverse=True)


def scrub(text: Any, *urls: str | None) -> str:
    """``text`` (an error message) with every credential of these URLs replaced by ***: driver
    errors sometimes quote the connection string they could not use."""
    text = str(text)
    for value in urls:
        for secret in _secrets(value or ""):
            text = text.replace(secret, _MASK)
    return text
