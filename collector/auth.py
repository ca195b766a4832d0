"""How the collector authenticates to the server under test, on every request alike.

Two settings can carry a credential: the campaign's API key (`server.api_key_env`),
sent as `Authorization: Bearer KEY`, and the credentials of an endpoint URL
(`--endpoint http://user:pw@host:port`), sent as Basic auth. A URL's credentials
belong in the Authorization header and nowhere else: a Host header or a request line
that carries them hands the password to every proxy and access log on the way, and a
server behind Basic auth still refuses the request.

When both are set, the API key wins: it is the setting made for the server's key
alone (llama-server and Shimmy check a Bearer key), where an endpoint's credentials
may simply come with the address it was copied from. That is curl's rule too (a
header given wins over the URL's), not httpx's (the URL's credentials replace it), so
the URL is cleaned before httpx or the raw client sees it, and a server with both
configured gets the key on every request, health checks and /tokenize included.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit


def bearer_headers(api_key: str | None) -> dict[str, str]:
    """The headers that send the campaign's API key (none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def url_credentials(
    url: str, headers: Mapping[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """`url` without its credentials, and `headers` with them as Basic auth.

    `Authorization: Basic base64(user:password)`, user and password percent-decoded
    and UTF-8 encoded, as RFC 3986 and httpx read them (`http://user@host`: an empty
    password). An Authorization header already in `headers` is kept, and the URL's
    credentials are then dropped (see the module's docstring).
    """
    out = dict(headers or {})
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, out
    user, _, password = userinfo.partition(":")
    if (user or password) and not any(name.lower() == "authorization" for name in out):
        pair = f"{unquote(user)}:{unquote(password)}".encode()
        out["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return urlunsplit(parts._replace(netloc=host)), out
