"""Admission limits, without I/O: who the client is, how many connections it holds, how much audio is held.

- ``client_address``: the peer's address, or, when the peer is a configured
  trusted proxy, the nearest address in ``X-Forwarded-For`` that is not one
  (a client can prepend anything to that header; only what trusted proxies
  appended is believed).
- ``ConnectionLimiter``: a cap on open connections in all and per address.
  Both are off by default: behind nginx, ``limit_conn`` and ``limit_req`` do
  this at the edge (deploy/nginx).
- ``AudioBudget``: the bytes of audio held by all requests at once (frames
  received, then decoded samples until the result is sent). Past the budget
  a request is answered ``overloaded`` instead of the machine running out.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import Counter
from collections.abc import Iterable

from asr_server.config import Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_address(peer: str, forwarded_for: Iterable[str], trusted: tuple[Network, ...]) -> str:
    """The address a request is counted against.

    ``forwarded_for`` holds every ``X-Forwarded-For`` header value, in order.
    """
    address = _address(peer)
    if address is None:
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    while trusted and any(address in network for network in trusted) and hops:
        previous = _address(hops.pop())
        if previous is None:
            break  # a malformed hop: stop at the last address that was believable
        address = previous
    return str(address)


class ConnectionLimiter:
    """Counts open connections; ``0`` turns a limit off."""

    def __init__(self, max_total: int = 0, max_per_address: int = 0) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._open: Counter[str] = Counter()
        self._total = 0

    def admit(self, address: str) -> str | None:
        """Count a connection in, or say why it is refused (and do not count it)."""
        if self.max_total and self._total >= self.max_total:
            return f"the server holds its limit of {self.max_total} connections"
        if self.max_per_address and self._open[address] >= self.max_per_address:
            return f"your address holds its limit of {self.max_per_address} connections"
        self._open[address] += 1
        self._total += 1
        return None

    def release(self, address: str) -> None:
        self._total -= 1
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    @property
    def total(self) -> int:
        return self._total


class AudioBudget:
    """Bytes of audio held across all requests; a request holds one ``Allowance`` while it runs."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0

    @property
    def exhausted(self) -> bool:
        return self.held_bytes >= self.limit_bytes

    def allowance(self) -> Allowance:
        return Allowance(self)


class Allowance:
    """One request's share of the budget; ``hold`` replaces what it holds, ``release`` frees it."""

    def __init__(self, budget: AudioBudget) -> None:
        self._budget = budget
        self.held = 0

    def hold(self, n_bytes: int) -> bool:
        """Hold ``n_bytes`` instead of what was held; False (holding nothing) if that breaks the budget."""
        budget = self._budget
        budget.held_bytes -= self.held
        self.held = 0
        if budget.held_bytes + n_bytes > budget.limit_bytes:
            return False
        budget.held_bytes += n_bytes
        self.held = n_bytes
        return True

    def release(self) -> None:
        self._budget.held_bytes -= self.held
        self.held = 0


class KeyRing:
    """The accepted API keys; several at once so keys can be rotated."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k.encode("utf-8") for k in keys)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def allows(self, candidate: object) -> bool:
        """Constant-time check of one key as given; every key is compared, match or not."""
        if not self._keys:
            return True
        if not isinstance(candidate, str):
            return False
        given = candidate.encode("utf-8", "surrogatepass")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        return matched

    def __repr__(self) -> str:
        return f"KeyRing({len(self._keys)} keys)"
