"""The hardware gateway, the client of the pump controllers: one protocol, and its HTTP
driver (httpx, timeouts, bounded retries). It knows no domain: the worker makes one and
hands it to the pump jobs in the worker context.

Every command carries a `command_id` the device de-duplicates, so a retry after a lost
answer can never start a pump twice; every start tells the device its own auto-off time."""

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    # Imported where a driver runs (the worker): the API loads this module for the worker
    # context's types alone, and httpx would cost each API worker 6 MB of memory.
    import httpx


class GatewayError(Exception):
    """The device could not be reached or refused, after the bounded retries."""


class Gateway(Protocol):
    async def start(
        self, hardware_id: str, command_id: str, duration_s: float, sequence: int
    ) -> None: ...

    async def stop(self, hardware_id: str, command_id: str) -> None: ...

    async def status(self, hardware_id: str) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class _Refused(Exception):
    pass


class HttpGateway:
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

        self.retries = retries
        self.backoff_s = backoff_s
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport)

    @staticmethod
    def max_call_s(timeout_s: float, retries: int, backoff_s: float = 0.1) -> float:
        """The longest one gateway call can take, retries included (for the watchdog)."""
        backoff: float = sum(backoff_s * 2**i for i in range(retries))
        return (retries + 1) * timeout_s + backoff

    async def start(
        self, hardware_id: str, command_id: str, duration_s: float, sequence: int
    ) -> None:
        await self._call(
            f"/pumps/{hardware_id}/start",
            {"command_id": command_id, "duration_s": duration_s, "sequence": sequence},
        )

    async def stop(self, hardware_id: str, command_id: str) -> None:
        await self._call(f"/pumps/{hardware_id}/stop", {"command_id": command_id})

    async def status(self, hardware_id: str) -> dict[str, Any]:
        return await self._call(f"/pumps/{hardware_id}", None)

    async def aclose(self) -> None:
        await self._client.aclose()

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
                if response.status_code in (409, 422):
                    raise _Refused(f"{response.status_code} {response.text[:200]}")
                response.raise_for_status()
                data: dict[str, Any] = response.json()
                return data
            except _Refused as exc:
                # A refusal (busy with another command, stale sequence) will not change on retry.
                raise GatewayError(f"device refused {path}: {exc}") from None
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"[:300]
        raise GatewayError(f"{path} failed after {self.retries + 1} attempts: {last}")
