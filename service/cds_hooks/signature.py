"""The signature step of a CDS client's JWT: the one check that costs real CPU (~0.33 ms for ES384).

Kept apart from `auth` (which makes every cheap check first) so that the signature process
(`signature_process`) can run exactly this code without the service's other imports.
"""

from __future__ import annotations

import binascii
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode

STRONG_ALGS = frozenset({"RS384", "ES384"})
SHA256_ALGS = frozenset({"RS256", "ES256"})
# joserfc's own header checks (crit, registered header types) and algorithm implementations (key type, curve,
# signature length), called directly: `jws.deserialize_compact` would decode the header again and build
# objects we do not need (~0.3 ms per call on the hook's hot path).
_JWS = JWSRegistry(algorithms=sorted(STRONG_ALGS | SHA256_ALGS))


def signature_valid(header: dict[str, Any], alg: str, key: Any, signing_input: bytes, signature: str) -> bool:
    """True when `signature` (base64url) signs `signing_input` ("header.payload") under `key` with `alg`;
    False for a wrong signature and for anything malformed (header, key type, curve, encoding)."""
    try:
        _JWS.check_header(header)
        model = _JWS.get_alg(alg)
        model.check_key(key)  # use, key type, curve, the key's own `alg` if it names one
        return bool(model.verify(signing_input, urlsafe_b64decode(signature.encode("ascii")), key))
    except (JoseError, ValueError, TypeError, binascii.Error):
        return False


def public_key(jwk: dict[str, Any]) -> Any:
    """A public JWK (dict) as the key object `signature_valid` takes."""
    return JWKRegistry.import_key(jwk)
