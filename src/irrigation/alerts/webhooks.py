"""Webhook delivery: the arq cron `deliver_webhooks`, and the signature scheme.

A run claims due deliveries in one short transaction (`FOR UPDATE SKIP LOCKED`, and
`next_attempt_at` pushed forward by a lease, so a run that dies mid-way is retried after
the lease), commits, then posts them all concurrently with no transaction open, each
bounded by `IRRIGATION_WEBHOOK_TIMEOUT_S`, and records every outcome in one statement.
A dead or hanging endpoint costs its own deliveries one timeout, never anyone else's: sends
are concurrent, and a run claims at most `PER_SUBSCRIPTION` deliveries of one subscription,
every site's oldest first. A delivery whose sending or recording raises here is recorded as
an `internal_error` attempt and backed off like any failed one; the others of the batch are
recorded as they went, and the site gets an `automation_failure` alert.

Delivery is at least once: a result that cannot be recorded (the lease ran out, the
database went away) is sent again. Receivers de-duplicate on `X-Irrigation-Delivery`.

Each attempt resolves the URL's host again, refuses it when any address is not public
(alerts/targets.py), and connects to the address it checked: the URL's host is swapped for
that address, the `Host` header and TLS (SNI and certificate check) keep the name. No
redirect is followed, the answer's body is never read, and the log keeps a fixed error class
(`DeliveryError`), never an exception's or the receiver's text.

Signature: `X-Irrigation-Signature: sha256=<hex>`, the HMAC-SHA256 with the subscription's
secret of `f"{X-Irrigation-Timestamp}.{raw body}"`; the timestamp is in unix seconds, so a
receiver can refuse old (replayed) requests."""

import asyncio
import hashlib
import hmac
import json
import ssl
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.alerts import targets
from irrigation.alerts.models import DeliveryError, DeliveryStatus
from irrigation.common.clock import utcnow
from irrigation.common.worker_context import worker_context
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

PER_SUBSCRIPTION = 10
# Beyond the send's own timeout: the time to record the outcomes.
LEASE_MARGIN_S = 30.0
USER_AGENT = "irrigation-webhooks/1"

# Due deliveries, at most PER_SUBSCRIPTION of each subscription (one dead receiver with a
# backlog must not fill the batch), every site's oldest first (each site's first, then each
# site's second, ...: one site's many subscriptions must not fill it either), locked and
# leased in one statement.
_CLAIM = """
WITH due AS (
    SELECT id FROM (
        SELECT id, next_attempt_at, site_id,
               row_number() OVER (PARTITION BY site_id ORDER BY next_attempt_at, id) AS site_nth
        FROM (
            SELECT d.id, d.next_attempt_at, d.site_id,
                   row_number() OVER (PARTITION BY d.subscription_id
                                      ORDER BY d.next_attempt_at, d.id) AS nth
            FROM webhook_deliveries AS d
            WHERE d.status = 'pending' AND d.next_attempt_at <= :now
        ) AS per_subscription
        WHERE nth <= :per_subscription
    ) AS ranked
    ORDER BY site_nth, next_attempt_at, id
    LIMIT :batch
), locked AS (
    SELECT d.id FROM webhook_deliveries AS d
    WHERE d.id IN (SELECT id FROM due) AND d.status = 'pending' AND d.next_attempt_at <= :now
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries AS d SET next_attempt_at = :lease_until
FROM locked, webhook_subscriptions AS s
WHERE d.id = locked.id AND s.id = d.subscription_id
RETURNING d.id, d.site_id, d.event, d.payload, d.created_at, d.attempts, s.url, s.secret
"""

# Guarded by `attempts`: an outcome recorded after the lease ran out (and another run sent
# the delivery again) does not count twice.
_RECORD = """
UPDATE webhook_deliveries AS d
SET status = r.status, attempts = r.attempts, next_attempt_at = r.next_attempt_at,
    last_attempt_at = r.attempted_at, last_status_code = r.status_code,
    last_error = r.error, delivered_at = r.delivered_at
FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:attempts AS int[]),
            CAST(:next_attempts AS timestamptz[]), CAST(:attempted AS timestamptz[]),
            CAST(:codes AS int[]), CAST(:errors AS text[]), CAST(:delivered AS timestamptz[]))
     AS r(id, status, attempts, next_attempt_at, attempted_at, status_code, error, delivered_at)
WHERE d.id = r.id AND d.status = 'pending' AND d.attempts = r.attempts - 1
"""


_RECORD_PARAMS = (
    "ids",
    "statuses",
    "attempts",
    "next_attempts",
    "attempted",
    "codes",
    "errors",
    "delivered",
)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    site_id: uuid.UUID
    event: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    url: str
    secret: str

    def body(self) -> bytes:
        envelope = {
            "id": str(self.id),
            "event": self.event,
            "created_at": self.created_at.isoformat(),
            "data": self.payload,
        }
        return json.dumps(envelope, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Outcome:
    delivery: Claimed
    attempted_at: datetime
    status_code: int | None
    error: str | None

    @property
    def is_delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def backoff(settings: Settings, attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: base * 2^(attempts-1), capped."""
    seconds = settings.webhook_backoff_base_s * 2 ** min(attempts - 1, 30)
    return timedelta(seconds=min(seconds, settings.webhook_backoff_max_s))


def _error_class(exc: BaseException) -> DeliveryError:
    """The class of a failed attempt, from the exception and what caused it."""
    if isinstance(exc, targets.ForbiddenTarget):
        return DeliveryError.forbidden_address
    if isinstance(exc, targets.Unresolvable):
        return DeliveryError.dns_error
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return DeliveryError.timeout
    causes: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, ssl.SSLError) for c in causes):
        return DeliveryError.tls_error
    if isinstance(exc, httpx.ConnectError):
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            return DeliveryError.connection_refused
        return DeliveryError.connect_error
    if isinstance(exc, httpx.ProtocolError):
        return DeliveryError.protocol_error
    if isinstance(exc, httpx.NetworkError):
        return DeliveryError.network_error
    return DeliveryError.error


async def _post(
    client: httpx.AsyncClient,
    settings: Settings,
    url: httpx.URL,
    body: bytes,
    headers: dict[str, str],
) -> int:
    """POST to a checked address of the URL's host; the next one only if the connection
    could not even be made (an IPv6 address on a host without IPv6)."""
    addresses = await targets.checked_addresses(
        str(url), settings.webhook_allow_networks, settings.webhook_timeout_s
    )
    named = targets.literal(url.host) is None
    # Host: the name as written (with a port only when not the scheme's own).
    headers = {**headers, "Host": url.netloc.decode("ascii")}
    # SNI and the certificate check are for the name, not the address connected to.
    extensions = {"sni_hostname": url.host} if named and url.scheme == "https" else {}
    for n, address in enumerate(addresses, start=1):
        pinned = url.copy_with(host=str(address))
        try:
            async with client.stream(
                "POST", pinned, content=body, headers=headers, extensions=extensions
            ) as response:
                return response.status_code
        except httpx.ConnectError as exc:
            if n == len(addresses) or _error_class(exc) is DeliveryError.tls_error:
                raise
    raise AssertionError("unreachable: resolve returns at least one address")


async def _send(client: httpx.AsyncClient, delivery: Claimed, settings: Settings) -> Outcome:
    body = delivery.body()
    attempted_at = utcnow()
    timestamp = int(attempted_at.timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Irrigation-Event": delivery.event,
        "X-Irrigation-Delivery": str(delivery.id),
        "X-Irrigation-Timestamp": str(timestamp),
        "X-Irrigation-Signature": sign(delivery.secret, timestamp, body),
    }
    try:
        # httpx's timeout bounds each phase; this bounds the whole attempt, the name's
        # resolution included (a receiver that trickles its answer byte by byte). The
        # answer's body is never read.
        async with asyncio.timeout(settings.webhook_timeout_s):
            code = await _post(client, settings, httpx.URL(delivery.url), body, headers)
    except Exception as exc:  # whatever one receiver does is that delivery's failure only
        error = _error_class(exc)
        # The detail stays in our log (the operator's), never in the delivery log (a
        # tenant's): it can carry another host's banner or error text.
        log.info(
            "webhook_attempt_failed",
            delivery_id=str(delivery.id),
            error=error.value,
            detail=f"{type(exc).__name__}: {exc}"[:300],
        )
        return Outcome(delivery, attempted_at, None, error.value)
    failed = None if 200 <= code < 300 else DeliveryError.http_error.value
    return Outcome(delivery, attempted_at, code, failed)


async def _attempt(client: httpx.AsyncClient, delivery: Claimed, settings: Settings) -> Outcome:
    """One delivery's attempt, whatever it raises: a fault of ours with one delivery (its
    body, its signature, a bug) is that delivery's failed attempt, recorded and backed off
    like any other, never the whole batch's (`gather` would fail them all unrecorded)."""
    try:
        return await _send(client, delivery, settings)
    except Exception:
        log.exception(
            "webhook_delivery_failed", delivery_id=str(delivery.id), site_id=str(delivery.site_id)
        )
        return Outcome(delivery, utcnow(), None, DeliveryError.internal_error.value)


def _internal_error(outcome: Outcome) -> Outcome:
    return Outcome(outcome.delivery, outcome.attempted_at, None, DeliveryError.internal_error.value)


async def _record(session: AsyncSession, settings: Settings, outcomes: list[Outcome]) -> None:
    """All outcomes in one statement; if that fails, each on its own, and one that still
    fails as an `internal_error` attempt (backed off): never left to be resent at once."""
    try:
        async with session.begin():
            await session.execute(text(_RECORD), _record_params(settings, outcomes))
        return
    except Exception:
        log.exception("webhook_record_failed", deliveries=len(outcomes))
    for outcome in outcomes:
        for attempt in (outcome, _internal_error(outcome)):
            try:
                async with session.begin():
                    await session.execute(text(_RECORD), _record_params(settings, [attempt]))
                break
            except Exception:
                log.exception(
                    "webhook_record_failed",
                    delivery_id=str(outcome.delivery.id),
                    site_id=str(outcome.delivery.site_id),
                    error=attempt.error,
                )


def _record_params(settings: Settings, outcomes: list[Outcome]) -> dict[str, list[Any]]:
    now = utcnow()
    params: dict[str, list[Any]] = {key: [] for key in _RECORD_PARAMS}
    for outcome in outcomes:
        attempts = outcome.delivery.attempts + 1
        if outcome.is_delivered:
            status, next_at = DeliveryStatus.delivered, now
        elif attempts >= settings.webhook_max_attempts:
            status, next_at = DeliveryStatus.failed, now
        else:
            status, next_at = DeliveryStatus.pending, now + backoff(settings, attempts)
        params["ids"].append(outcome.delivery.id)
        params["statuses"].append(status.value)
        params["attempts"].append(attempts)
        params["next_attempts"].append(next_at)
        params["attempted"].append(outcome.attempted_at)
        params["codes"].append(outcome.status_code)
        params["errors"].append(outcome.error)
        params["delivered"].append(now if outcome.is_delivered else None)
    return params


async def deliver_webhooks(ctx: dict[str, Any]) -> int:
    """arq cron (every second): send what is due; returns how many were attempted."""
    jc = worker_context(ctx)
    settings = jc.settings
    now = utcnow()
    lease = timedelta(seconds=settings.webhook_timeout_s + LEASE_MARGIN_S)
    async with jc.sessions() as session:
        async with session.begin():
            rows = await session.execute(
                text(_CLAIM),
                {
                    "now": now,
                    "lease_until": now + lease,
                    "per_subscription": PER_SUBSCRIPTION,
                    "batch": settings.webhook_batch_size,
                },
            )
            claimed = [Claimed(*row) for row in rows.all()]
        if not claimed:
            return 0
        # Committed: no lock and no transaction is held while the receivers answer.
        # Made per run, and only when there is work: idle runs (nearly all) cost nothing.
        async with httpx.AsyncClient(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            # No connection is kept for another delivery: one made with the TLS name of one
            # URL must never carry a request for another name at the same address.
            limits=httpx.Limits(
                max_connections=settings.webhook_batch_size, max_keepalive_connections=0
            ),
        ) as client:
            outcomes = await asyncio.gather(*(_attempt(client, d, settings) for d in claimed))
        await _record(session, settings, list(outcomes))
    failed = [o for o in outcomes if not o.is_delivered]
    if failed:
        log.info("webhook_attempts_failed", failed=len(failed), attempted=len(outcomes))
    return len(outcomes)
