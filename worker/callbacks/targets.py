"""Where an upstream app's signed callbacks go, and where they may never go. Pure.

``PAW_CALLBACKS`` names, per API key, a URL and a Standard Webhooks secret: entries separated by
commas or new lines, each ``REF URL SECRET`` (whitespace between the three):

- ``REF``: the API key's fingerprint (:func:`worker.items.model.api_key_fingerprint`, 16 hex digits:
  ``printf %s KEY | sha256sum | cut -c1-16``), whose submitted Items' events go to this URL; or
  ``amqp`` for Items submitted over AMQP (they have no API key; also Items made before paw recorded
  the key). An Item whose key has no entry gets no callbacks.
- ``URL``: ``http://`` or ``https://``, a host, no user or password, no fragment (a literal comma
  is written ``%2C``).
- ``SECRET``: ``whsec_`` and the base64 of 24 to 64 random bytes (the Standard Webhooks form, e.g.
  ``echo whsec_$(openssl rand -base64 32)``).

**No SSRF into the cluster.** A callback URL is the upstream app's to choose, so paw never lets it
reach what only paw can reach: link-local addresses (169.254.0.0/16, fe80::/10: every cloud's
metadata service), the known metadata addresses and names (fd00:ec2::254, 100.100.100.200,
168.63.129.16, metadata.google.internal, ...), unspecified, multicast and reserved addresses are
refused always; private, loopback, shared (CGNAT) and other non-global addresses too unless
``PAW_CALLBACK_ALLOW_PRIVATE`` is set. The host is resolved at each delivery and every address it
resolves to is checked, and the connection goes to those checked addresses (no second lookup to
rebind); redirects are never followed.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import re
from urllib.parse import urlsplit

from worker.errors import SettingsError

AMQP_REF = "amqp"
FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")
SECRET_PREFIX = "whsec_"  # noqa: S105 - the form's prefix, not a secret

# Names that only ever mean a cloud's metadata service (lower case, without a trailing dot).
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.com",
        "metadata.tencentyun.com",
    }
)
# Metadata and platform addresses outside the link-local ranges.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure's wire server
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclasses.dataclass(frozen=True)
class Callback:
    """One entry of ``PAW_CALLBACKS``."""

    ref: str  # an API key's fingerprint, or AMQP_REF
    url: str
    secret: str  # whsec_<base64>

    def __str__(self) -> str:  # as `paw config` shows it: never the secret
        return f"{self.ref} {self.url} ****"


def address_refusal(address: str, *, allow_private: bool) -> str | None:
    """Why paw must not connect to ``address`` (an IP address as text), or ``None``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index says nothing here
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if embedded is not None:
            reason = address_refusal(str(embedded), allow_private=allow_private)
            return f"{address} embeds {embedded}: {reason}" if reason else None
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if ip.is_link_local:
        return f"{ip} is link-local (where cloud metadata services live)"
    if ip.is_unspecified or ip.is_multicast or (ip.is_reserved and not ip.is_loopback):  # ::1 is in ::/8
        return f"{ip} is not a unicast address"
    if not ip.is_global and not allow_private:
        kind = "loopback" if ip.is_loopback else "private" if ip.is_private else "not public"
        return f"{ip} is {kind} (PAW_CALLBACK_ALLOW_PRIVATE allows private targets)"
    return None


def url_refusal(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` may not be a callback URL, or ``None``. Checks what can be known without DNS:
    the scheme, the parts, a metadata name, a literal address (which nothing resolves later)."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as e:
        return f"not a URL ({e})"
    if parts.scheme not in ("http", "https"):
        return "the URL must start with http:// or https://"
    if not host:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "the URL must not carry a user or password"
    if parts.fragment:
        return "the URL must not have a fragment"
    if port == 0:
        return "port 0"
    name = host.rstrip(".").lower()
    if name in METADATA_NAMES:
        return f"{name} is a cloud metadata service"
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None  # a name: checked when it is resolved, at each delivery
    return address_refusal(name, allow_private=allow_private)


def _secret(name: str, value: str) -> str:
    if not value.startswith(SECRET_PREFIX):
        raise SettingsError(f"{name}: a secret must start with {SECRET_PREFIX} (Standard Webhooks form)")
    encoded = value[len(SECRET_PREFIX) :]
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"{name}: a secret must be {SECRET_PREFIX} and base64") from None
    if not 24 <= len(raw) <= 64:
        raise SettingsError(f"{name}: a secret must decode to 24 to 64 bytes, got {len(raw)}")
    return value


def parse_callbacks(name: str, raw: str) -> tuple[Callback, ...]:
    """``PAW_CALLBACKS``: ``REF URL SECRET`` entries, separated by commas or new lines."""
    out: list[Callback] = []
    entries = [e.strip() for e in re.split(r"[,\n]", raw) if e.strip()]
    if not entries:
        raise SettingsError(f"{name} is set but empty")
    for n, entry in enumerate(entries, 1):
        fields = entry.split()
        if len(fields) != 3:
            raise SettingsError(f"{name}: entry {n} must be 'REF URL SECRET', got {len(fields)} fields")
        ref, url, secret = fields
        ref = ref.lower()
        if ref != AMQP_REF and not FINGERPRINT.match(ref):
            raise SettingsError(
                f"{name}: entry {n}: {ref[:20]!r} is neither {AMQP_REF!r} nor an API key's fingerprint "
                "(16 hex digits of its SHA-256)"
            )
        reason = url_refusal(url, allow_private=True)
        if reason is not None:
            shown = url.split("@")[-1][:100]
            raise SettingsError(f"{name}: entry {n}: callback URL {shown!r} refused: {reason}")
        if any(c.ref == ref for c in out):
            raise SettingsError(f"{name}: {ref!r} has two entries: keep one")
        out.append(Callback(ref, url, _secret(f"{name}: entry {n}", secret)))
    return tuple(out)


def unknown_refs(callbacks: tuple[Callback, ...], fingerprints: set[str]) -> list[str]:
    """The entries naming no configured API key (a typo, or a key since removed)."""
    return [c.ref for c in callbacks if c.ref != AMQP_REF and c.ref not in fingerprints]
