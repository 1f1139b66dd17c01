"""Text from patient data, made inert for a CDS card's GitHub-flavoured markdown `detail`.

A card quotes findings, drug and diagnosis names, unit spellings and result text that come from the EHR. In
markdown those could become emphasis, links, images, raw HTML or autolinks; escaped here they are shown as
typed. CommonMark lets any ASCII punctuation be backslash-escaped, and GFM's extended autolinks need a literal
"://" or "www.", so escaping the markdown and HTML punctuation and breaking those two sequences is enough.
Line breaks become spaces: a value never starts a new block (a heading, a list, a table row).
"""

from __future__ import annotations

import re

_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~&])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


# Anything md changes; most card text has none of it and is returned as it is, without the three rewrites.
_ANY = re.compile(r"[\\`*_{}\[\]()#+!|<>~&\x00-\x1f\x7f]|://|www\.|WWW\.")


def md(text: object) -> str:
    """`text` as literal markdown text: no markup, no HTML, no link, no new block."""
    s = str(text)
    if _ANY.search(s) is None:
        return s
    s = _CONTROL.sub(" ", s)
    s = _SPECIAL.sub(r"\\\1", s)
    return s.replace("://", ":\\/\\/").replace("www.", "www\\.").replace("WWW.", "WWW\\.")
