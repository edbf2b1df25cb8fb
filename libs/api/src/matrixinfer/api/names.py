"""The DNS-1123 rules for object names (metadata.name, metadata.namespace).

Each rule takes its length bound as an argument so that every caller states the
bound it enforces: a label is at most 63 characters, a subdomain at most 253.
Checks are whole-string (a trailing newline is not part of a valid name).
"""

from __future__ import annotations

import re

LABEL_MAX_LENGTH = 63
SUBDOMAIN_MAX_LENGTH = 253

# Lowercase ASCII letters, digits and '-' ('.' too in a subdomain), starting and
# ending with a letter or digit. The lengths are checked separately.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def is_dns1123_label(value: str, max_length: int = LABEL_MAX_LENGTH) -> bool:
    """``value`` is 1..max_length lowercase letters, digits and '-', starting and
    ending with a letter or digit."""
    return len(value) <= max_length and _LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: str, max_length: int = SUBDOMAIN_MAX_LENGTH) -> bool:
    """Like :func:`is_dns1123_label`, with '.' allowed inside."""
    return len(value) <= max_length and _SUBDOMAIN.fullmatch(value) is not None
