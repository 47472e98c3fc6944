"""The HTTP driver: our simulator's dialect, `POST /devices/{site}/{hw}/{start|stop|halt}`
and `GET /devices/{site}/{hw}` (httpx, timeouts, bounded retries)."""

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from irrigation.gateway.wire import (
    Ack,
    Command,
    DeviceAddress,
    DeviceState,
    GatewayError,
    GatewayFailure,
    StatePredicate,
    max_call_s,
)

if TYPE_CHECKING:
    # Imported where a driver runs (the worker): the API loads the gateway for the worker
    # context's types alone, and httpx would cost each API worker 6 MB of memory.
    import httpx


class _Refused(Exception):
    pass


# How often `await_state` asks an HTTP device: soon at first (a relay answers in
# milliseconds), then less often.
_POLL_FIRST_S = 0.02
_POLL_MAX_S = 0.25
# Devices asked at once by `states` (the reconciliation's sweep).
_STATES_CONCURRENCY = 16


class HttpGateway:
    """The HTTP driver: `POST /devices/{site}/{hw}/{start|stop|halt}`, `GET
    /devices/{site}/{hw}`. Timeouts and 5xx are retried with back-off (every command is
    de-duplicated by the device); a 4xx is the device refusing the request and is not."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.1,
        transport: "httpx.AsyncBaseTransport | None" = None,
    ) -> None:
        import httpx

        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport)

    @property
    def call_budget_s(self) -> float:
        return max_call_s(self.timeout_s, self.retries, self.backoff_s)

    async def send(self, device: DeviceAddress, command: Command) -> Ack:
        body = command.to_json()
        del body["op"]  # the path says it
        return Ack.from_json(await self._call(f"/devices/{device}/{command.op}", body))

    async def state(self, device: DeviceAddress) -> DeviceState:
        return DeviceState.from_json(await self._call(f"/devices/{device}", None))

    async def await_state(
        self, device: DeviceAddress, until: StatePredicate, timeout_s: float
    ) -> DeviceState | None:
        deadline = time.monotonic() + timeout_s
        pause = _POLL_FIRST_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                # One attempt per poll: the loop is the retry, and the deadline holds.
                found = await self._once(f"/devices/{device}", min(self.timeout_s, remaining))
                state = DeviceState.from_json(found)
            except (GatewayError, KeyError, TypeError, ValueError):
                state = None
            if state is not None and until(state):
                return state
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, _POLL_MAX_S)

    async def states(
        self, devices: Sequence[DeviceAddress]
    ) -> dict[DeviceAddress, DeviceState | None]:
        limit = asyncio.Semaphore(_STATES_CONCURRENCY)

        async def one(device: DeviceAddress) -> DeviceState | None:
            async with limit:
                try:
                    return DeviceState.from_json(
                        await self._once(f"/devices/{device}", self.timeout_s)
                    )
                except (GatewayError, KeyError, TypeError, ValueError):
                    return None

        found = await asyncio.gather(*(one(d) for d in devices))
        return dict(zip(devices, found, strict=True))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _once(self, path: str, timeout_s: float) -> dict[str, Any]:
        import httpx

        try:
            response = await self._client.get(path, timeout=timeout_s)
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            return data
        except (httpx.HTTPError, ValueError) as exc:
            failure = GatewayFailure.bad_answer if isinstance(exc, ValueError) else None
            raise GatewayError(
                f"{path}: {type(exc).__name__}: {exc}"[:300],
                failure or GatewayFailure.unreachable,
            ) from None

    async def _call(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        import httpx

        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                if body is None:
                    response = await self._client.get(path)
                else:
                    response = await self._client.post(path, json=body)
                if 400 <= response.status_code < 500:
                    raise _Refused(f"{response.status_code} {response.text[:200]}")
                response.raise_for_status()
                data: dict[str, Any] = response.json()
                return data
            except _Refused as exc:
                # The device refused the request itself (malformed, unknown path): a retry
                # would be refused alike.
                raise GatewayError(
                    f"device refused {path}: {exc}", GatewayFailure.refused
                ) from None
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"[:300]
        raise GatewayError(f"{path} failed after {self.retries + 1} attempts: {last}")
