"""authlib's httpx OAuth2 client, imported once with its "use httpx2" deprecation notice silenced
(the project pins httpx; authlib falls back to it and works unchanged)."""

import warnings

import authlib.deprecate  # noqa: F401 - installs its own warning filter; ours must come after it

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

__all__ = ["AsyncOAuth2Client", "OAuthError"]
