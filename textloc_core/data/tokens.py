"""Identifier tokens (``<doll1>``): the text rules, the same wherever a token is accepted.

A token is written in prompts, stored in adapter files and becomes part of file names, so it
must be one word of letters, digits and ``_ - < >``, and never contain ``..``. Whether the
text encoder already knows it is a separate, model-side check (``TextBackend.check_token``).
"""

from __future__ import annotations

import re

TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9_<>\-]+")
"""Everything a token may be made of."""

_PLAIN_WORD = re.compile(r"[A-Za-z]+")


def token_text_problem(token) -> str | None:
    """Why ``token`` cannot be an identifier token, phrased to follow it ("'<a b>' contains
    whitespace: ..."), or None when its text is fine."""
    if not isinstance(token, str) or not token.strip():
        return "is an empty token: give a new word such as '<doll>'"
    if any(sep in token for sep in ("/", "\\")) or ".." in token:
        return "contains a path separator or '..': use letters, digits, '_', '-', '<', '>'"
    if any(ch.isspace() for ch in token):
        return f"contains whitespace: a token must be one word, e.g. '<{token.strip('<> ').split()[0]}>'"
    if not TOKEN_CHARACTERS.fullmatch(token):
        return "may only contain letters, digits, '_', '-', '<', '>' (e.g. '<doll1>')"
    return None


def check_token_text(token: str, what: str = "token") -> None:
    """Raise ValueError naming ``what`` when ``token`` breaks a text rule of ``token_text_problem``."""
    problem = token_text_problem(token)
    if problem:
        raise ValueError(f"{what}: {token!r} {problem}")


def is_plain_word(token: str) -> bool:
    """Letters only: an ordinary word the model may already know, never a good identifier."""
    return bool(_PLAIN_WORD.fullmatch(token or ""))
