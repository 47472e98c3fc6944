"""Keep-alive clients spread over the API's worker processes.

Several uvicorn workers share one listening socket, and a keep-alive connection stays with
the worker that accepted it. Clients that connect while the server is idle often all land
in one worker, which then parses every batch on one core while the other cores wait
(docs/benchmarks.md, Ingestion). So a batch answered while another batch was in flight in
the same worker closes its connection (`Connection: close`, which every HTTP/1.1 client
honours by reconnecting): the client's next connection goes to whichever worker accepts it
first, rarely the busy one. A client alone on its worker keeps its connection."""

from collections.abc import Iterator
from contextlib import contextmanager


class WorkerLoad:
    """The batches in flight in this worker process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        """The worker processes serving the port (uvicorn's WEB_CONCURRENCY)."""
        self.in_flight = 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def crowded(self) -> bool:
        """Whether the batch being answered should send its client elsewhere: only when
        another batch is in flight here and there is an elsewhere."""
        return self.workers > 1 and self.in_flight > 1
