"""Which Host names a server without an API key answers: DNS rebinding defence.

A web page on evil.example can point its own name at 127.0.0.1 after loading (DNS rebinding); the browser then
sends the page's requests to a local server as same-origin, with `Host: evil.example:8000`, and no cross-site
mark. A keyless server therefore answers only requests addressed to a name that cannot be rebound: an IP
address, `localhost` (and `*.localhost`), this machine's own name, or a name the operator allows.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache

ANY_HOST = "*"


@lru_cache(maxsize=1)
def machine_names() -> frozenset[str]:
    """This machine's host name and fully qualified name, lower case (a LAN client may use either)."""
    names = {socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:  # a resolver that fails: the plain name still counts
        pass
    return frozenset(n.lower().rstrip(".") for n in names if n)


def hostname_of(header: bytes) -> str:
    """b"Example.com:8000" -> "example.com"; b"[::1]:8000" -> "::1" (brackets kept off)."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text[1:]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def allowed_name(value: str) -> str:
    """An --allow-host value as the name host_allowed compares: "Photos.Example:8080" (as the address bar shows it)
    and "http://photos.example:8080/" mean photos.example. Kept as given, a port or a scheme made a name no request's
    Host ever equals, so every request was refused naming the very flag that had been passed."""
    text = value.strip()
    if text == ANY_HOST:
        return text
    text = text.split("://", 1)[-1].split("/", 1)[0]
    return hostname_of(text.encode("latin-1", "replace")).rstrip(".")


def host_allowed(header: bytes | None, allowed: frozenset[str]) -> bool:
    """Whether a keyless server may answer a request with this Host header (``allowed``: the operator's extra
    names, ANY_HOST for all). A request with no Host (HTTP/1.0) comes from no browser: allowed."""
    if header is None or ANY_HOST in allowed:
        return True
    name = hostname_of(header).rstrip(".")
    if name in allowed or name == "localhost" or name.endswith(".localhost") or name in machine_names():
        return True
    try:
        ipaddress.ip_address(name.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is no part of the address
    except ValueError:
        return False
    return True
