"""The collector's HTTP seam over httpx, for measuring it against `collector.http1`.

`collector.client.generate(..., post=httpx_post)` then streams through httpx
(httpcore + h11): `iter_raw` yields the body as h11 hands it over, one item per
network read that carried body data, and the same stall and deadline rules
apply. Only the benchmark uses it: it is the arm that says whether the
collector's own HTTP/1.1 client is still worth keeping.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx

from collector.http1 import HTTPFailure, PostRequest


class HttpxResponse:
    """An httpx streaming response behind the interface the client reads."""

    def __init__(self, client: httpx.Client, response: httpx.Response) -> None:
        self._client = client
        self._response = response
        self.status = response.status_code
        self.headers = response.headers  # case-insensitive, as the client reads them

    def reads(self, stall_s: float, deadline: float | None = None) -> Iterator[bytes]:
        try:
            for part in self._response.iter_raw():
                if deadline is not None and time.monotonic() > deadline:
                    raise HTTPFailure("deadline", "request deadline passed")
                yield part
        except httpx.ReadTimeout as exc:
            raise HTTPFailure("timeout", "no data") from exc
        except httpx.RemoteProtocolError as exc:
            raise HTTPFailure("disconnected", str(exc)) from exc
        except httpx.HTTPError as exc:
            raise HTTPFailure("disconnected", f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._response.close()
        self._client.close()


def httpx_post(request: PostRequest) -> HttpxResponse:
    """`collector.http1.post`'s contract, over httpx (a new client per request, as the
    collector opens a new connection per request). httpx has no deadline over connect and
    headers: the time left is its timeout for each, the closest it can do."""
    read_s, deadline = request.read_timeout_s, request.deadline
    left = read_s if deadline is None else max(deadline - time.monotonic(), 0.001)
    client = httpx.Client(
        timeout=httpx.Timeout(
            min(read_s, left), connect=min(request.connect_timeout_s, left), pool=left
        ),
        trust_env=False,
    )
    try:
        sent = client.build_request(
            "POST", request.url, content=request.body, headers=dict(request.headers)
        )
        return HttpxResponse(client, client.send(sent, stream=True))
    except httpx.ConnectError as exc:
        client.close()
        raise HTTPFailure("connect", f"cannot connect: {exc}") from exc
    except httpx.TimeoutException as exc:
        client.close()
        raise HTTPFailure("timeout", "no response") from exc
    except httpx.HTTPError as exc:
        client.close()
        raise HTTPFailure("disconnected", f"{type(exc).__name__}: {exc}") from exc
