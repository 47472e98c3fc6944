"""Runtime configuration, read from `IRRIGATION_*` environment variables and `.env`."""

import re
from functools import lru_cache
from typing import Annotated, Any, Literal

import limits
from pydantic import AliasChoices, Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MULTIPROCESS_METRICS = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's own variable: when set, each process keeps its values in files in
that directory, and /metrics adds up every process's (`irrigation serve --workers N`)."""

_ORIGIN = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


def to_asyncpg_url(url: str) -> str:
    """Accept `postgresql://`, `postgres://` and `postgresql+asyncpg://` alike."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def parse_rate_limit(text: str) -> limits.RateLimitItem:
    """One limit in `limits`' notation (`600/minute`, `10 per second`, `1000/2 hours`);
    ValueError for anything else, several limits, or a quota of 0."""
    try:
        parsed = limits.parse_many(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a limit like '600/minute'") from None
    if len(parsed) != 1:
        raise ValueError(f"{text!r}: one limit, not several")
    if parsed[0].amount < 1:
        raise ValueError(f"{text!r}: the quota must be at least 1")
    return parsed[0]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IRRIGATION_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL; unset means localhost or an embedded server (`up`).",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL; unset means localhost or an embedded server."
    )
    embedded: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="`up`/tests: start embedded PostgreSQL/Redis when no URL is set and "
        "nothing answers on localhost (auto), always, or never.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    web_concurrency: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices("web_concurrency", "WEB_CONCURRENCY"),
        description="API worker processes sharing the port: uvicorn's own variable, set by "
        "`irrigation serve --workers`. Above 1, busy workers spread keep-alive clients.",
    )
    shutdown_grace_s: int = Field(
        default=5,
        ge=1,
        description="`serve`: how long requests in progress may go on once the API is asked "
        "to stop; then they are cancelled (a live client that reads nothing would otherwise "
        "hold the stop for ever). `up` kills what has not stopped after 6 s.",
    )
    simulator_port: int = Field(default=8081, ge=1, le=65535)
    gateway: Literal["http", "mqtt"] = Field(
        default="http",
        description="How the worker reaches the pump controllers: `mqtt` through the broker at "
        "IRRIGATION_MQTT_URL (`up` chooses it), `http` at IRRIGATION_GATEWAY_URL.",
    )
    gateway_url: str = "http://127.0.0.1:8081"
    # Weather for ET scaling and rain skips: Open-Meteo's API, by default the simulator's
    # copy of it (like gateway_url); "none" waters without weather.
    weather_provider: Literal["open_meteo", "fake", "none"] = "open_meteo"
    weather_url: str = "http://127.0.0.1:8081"
    weather_cache_s: int = Field(default=1800, ge=0)
    weather_timeout_s: float = Field(default=5.0, gt=0)
    data_dir: str = ".data"
    log_level: str = "INFO"
    log_format: Literal["auto", "console", "json"] = Field(
        default="auto",
        description="Log lines: readable `console` lines, or one `json` object per line; "
        "auto is console when standard error is a terminal, else JSON (`up` decides once "
        "for every process it starts).",
    )

    docs_enabled: bool = Field(
        default=True,
        description="Serve the API's documentation: `/docs` (Swagger UI) and "
        "`/openapi.json`. Off: both are 404.",
    )
    dashboard_enabled: bool = Field(
        default=True,
        description="Serve the operator's dashboard at `/` (its files under `/dashboard/`). "
        "Off: both are 404; the API is unchanged.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins (`scheme://host[:port]`, comma-separated, or `*`) whose pages "
        "may call the API from a browser: a frontend of your own on another host. Empty: no "
        "CORS headers at all, so only pages the API serves itself (the dashboard) can.",
    )
    metrics_token: SecretStr = Field(
        default=SecretStr(""),
        description="When set, `/metrics` (the API's and the MQTT bridge's) answers only "
        "`Authorization: Bearer <token>`, else 401. Empty: public.",
    )

    max_runtime_cap_s: int = Field(default=30, ge=1, le=3600)
    min_cooldown_s: int = Field(default=900, ge=0)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_page_size: int = 500
    lock_timeout_ms: int = Field(default=2000, ge=1)
    statement_timeout_ms: int = Field(default=30000, ge=1)
    idle_in_transaction_timeout_ms: int = Field(default=10000, ge=1)
    db_pool_size: int = Field(default=10, ge=1)
    # Per process: API replicas and workers together must stay under max_connections.
    db_max_overflow: int = Field(default=5, ge=0)
    redis_timeout_s: float = Field(default=0.5, gt=0)
    auth_cache_ttl_s: float = Field(
        default=1.0, ge=0, description="How long a process trusts a key it has checked (0: off)."
    )
    redis_namespace: str = Field(
        default="irrigation",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Prefix of every Redis key and of the job queue (one Redis, many stacks).",
    )
    live_stream_maxlen: int = Field(
        default=10_000,
        ge=100,
        description="Events kept per site for the live feed (a client that reconnects gets "
        "what it missed within these).",
    )
    live_heartbeat_s: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="An SSE stream sends the comment `: ping` after this long without an "
        "event; every open stream renews its lease and checks its key again at least this "
        "often (at most every 10 s).",
    )
    live_max_streams_per_key: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Live streams (SSE and WebSocket together) one API key may hold open at "
        "once, across every API process; one more is 429 `too_many_streams`.",
    )
    live_max_backlog: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Events read for one live connection and not yet taken by its client; "
        "one more, and the connection is cut off (the client resumes from its last id).",
    )
    live_ticket_ttl_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How long a live ticket (`POST /v1/live/tickets`) may wait for its one use.",
    )
    auth_unknown_ttl_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a process remembers a well-formed key it did not find, so a "
        "flood of one junk token costs one lookup (0: off).",
    )

    # Rate limits: per API key (per client address for requests without a valid key), in
    # Redis. `N/second|minute|hour|day` strings; a site's admin may set its own per class.
    rate_limits_enabled: bool = Field(default=True, description="Off: no request is counted.")
    rate_limit_read: str = Field(default="1200/minute", description="GET routes.")
    rate_limit_write: str = Field(default="600/minute", description="Configuration changes.")
    rate_limit_ingest: str = Field(
        default="600000/minute",
        description="`POST /v1/readings`: one per request plus one per reading in it.",
    )
    rate_limit_control: str = Field(
        default="300/minute", description="Pump commands, the run queue, pause and rain delay."
    )
    rate_limit_expensive: str = Field(
        default="15/minute",
        description="Imports, CSV exports, aggregates over a long range, webhook tests.",
    )
    rate_limit_long_range_days: int = Field(
        default=31, ge=1, description="An aggregate query over more days than this is expensive."
    )
    rate_limit_site_max_factor: float = Field(
        default=1.0,
        gt=0,
        description="How far above the deployment's limit a site's admin may set its own "
        "(1: a site may only lower its limits).",
    )
    rate_limit_site_cache_ttl_s: float = Field(
        default=10.0,
        ge=0,
        description="How long a process uses a site's own limits before reading them again; "
        "a change through this process takes effect at once.",
    )

    # Pump activation
    max_queue_delay_s: int = Field(
        default=10, ge=1, description="A start that waited longer than this is expired."
    )
    gateway_timeout_s: float = Field(default=2.0, gt=0)
    gateway_retries: int = Field(default=2, ge=0, le=10)
    confirm_timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=10,
        description="A start or stop counts once the device's reported state confirms it "
        "within this; an unconfirmed start fails (not_confirmed) and latches a fault.",
    )
    stop_retries: int = Field(
        default=2,
        ge=0,
        le=5,
        description="An unconfirmed stop is sent again as a halt this many times, with "
        "back-off, before the pump latches a fault (stop_unconfirmed).",
    )
    watchdog_grace_s: float = Field(
        default=2.0, ge=0, description="How long past its deadline a run may go unreconciled."
    )
    outbox_relay_after_s: float = Field(
        default=2.0, ge=0, description="Age at which the relay re-enqueues an outbox row."
    )
    enqueue_fast_path: bool = Field(
        default=True, description="Enqueue right after commit (off: only the relay, for tests)."
    )
    pump_batch_size: int = Field(
        default=50,
        ge=1,
        le=500,
        description="A start job starts its own run and up to this many less one other "
        "queued runs (fairly across sites), a deadline stop job stops its own and up to "
        "this many less one other runs past their deadline, the commands of each batch "
        "sent concurrently; 1: one run a job.",
    )
    worker_poll_delay_s: float = Field(default=0.05, gt=0)
    # arq's poll dies on a Redis timeout and takes the process with it: the queues' own
    # connections wait longer than a request's (IRRIGATION_REDIS_TIMEOUT_S), so a busy
    # Redis or a worker's long synchronous stretch costs latency, not a restart.
    worker_redis_timeout_s: float = Field(default=5.0, gt=0)
    # Each queue's jobs at once per worker process (README, "Workers and queues").
    worker_max_jobs_pumps: int = Field(
        default=50, ge=1, description="Pump jobs (start, stop) a `pumps` worker runs at once."
    )
    worker_max_jobs_automation: int = Field(
        default=20,
        ge=1,
        description="Automation jobs (dispatch, schedules, rules, alerts, webhooks) an "
        "`automation` worker runs at once.",
    )
    worker_max_jobs_bulk: int = Field(
        default=10,
        ge=1,
        description="Bulk jobs (import slices of ~10 s, retention) a `bulk` worker runs at once.",
    )
    idempotency_ttl_s: int = Field(default=86400, ge=60)

    # Automation
    threshold_run_deadline_s: int = Field(
        default=1800, ge=10, description="How long a threshold run may wait for its pump."
    )
    queued_run_deadline_s: int = Field(
        default=3600, ge=10, description="Default wait limit of a person's queued request."
    )
    runqueue_max_bypass: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="How many runs of its water source may start ahead of a waiting run that "
        "does not fit the source's flow budget; then nothing of its priority or lower starts "
        "there before it (0: none ever passes).",
    )
    automation_history_days: int = Field(
        default=400, ge=1, description="Decisions and finished run requests are kept this long."
    )
    evaluation_delay_s: float = Field(
        default=2.0,
        ge=0,
        description="Readings for a zone are evaluated once per this delay, not per batch.",
    )
    automation_retry_base_s: float = Field(
        default=30.0,
        gt=0,
        description="A schedule, rule or run request whose processing raised is tried again "
        "after base * 2^(n-1) seconds (n failures in a row), up to the maximum.",
    )
    automation_retry_max_s: float = Field(default=3600.0, gt=0)

    # Readings
    raw_retention_days: int = Field(
        default=1825, ge=1, description="Raw readings older than this are refused and removed."
    )
    max_upload_bytes: int = Field(
        default=1024 * 1024 * 1024, ge=1024, description="Largest history file for an import."
    )
    water_use_max_gap_s: int = Field(
        default=300,
        ge=1,
        le=3600,
        description="Two flow readings further apart than this are not integrated: the "
        "meter was silent, and what flowed meanwhile is not known.",
    )

    min_free_disk_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="An upload is refused (507 insufficient_storage) while the data "
        "directory's disk has less free space than this (0: no check).",
    )
    quarantine_reviewed_retention_days: int = Field(
        default=90,
        ge=1,
        description="Reviewed (approved or rejected) quarantined items are deleted this long "
        "after their review; pending ones are kept until reviewed.",
    )

    # Quotas: every site's limits. A site's admin may set its own lower ones
    # (PATCH /v1/sites/current/quotas), never higher ones; IRRIGATION_MAX_UPLOAD_BYTES is
    # the quota `max_upload_bytes`.
    quota_max_concurrent_imports: int = Field(
        default=8, ge=0, description="Imports queued or running per site (429 beyond)."
    )
    quota_waiting_run_requests_per_pump: int = Field(
        default=100, ge=0, description="Run requests waiting for one pump (409 beyond)."
    )
    quota_waiting_run_requests_per_site: int = Field(
        default=2000, ge=0, description="Run requests waiting in one site (409 beyond)."
    )
    quota_max_schedules: int = Field(default=1000, ge=0, description="Schedules per site.")
    quota_max_rules: int = Field(default=1000, ge=0, description="Threshold rules per site.")
    quota_max_webhooks: int = Field(
        default=100, ge=0, description="Webhook subscriptions per site."
    )
    quota_max_pending_quarantine: int = Field(
        default=100_000,
        ge=0,
        description="Quarantined items awaiting review per site; bad items beyond it are "
        "refused and counted, not kept.",
    )

    # MQTT: the broker shared by the readings bridge and the devices
    mqtt_url: str = Field(
        default="mqtt://127.0.0.1:1883",
        pattern=r"^mqtts?://",
        description="The broker: `mqtt://[user:password@]host[:port]` (`mqtts://` for TLS). "
        "`up` starts an embedded broker when a local one does not answer.",
    )
    mqtt_protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto",
        description="MQTT version: auto tries 5 (shared subscriptions, session expiry, "
        "receive maximum) and falls back to 3.1.1 (the embedded broker speaks only that).",
    )
    mqtt_client_id_prefix: str = Field(
        default="irrigation",
        pattern=r"^[A-Za-z0-9_.:-]{1,40}$",
        description="Start of every client id this service connects with.",
    )
    mqtt_instance: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_.:-]{0,40}$",
        description="This process's name within its role, for a stable client id (the "
        "broker keeps a persistent session per id); empty: the host name.",
    )
    mqtt_topic_root: str = Field(
        default="irrigation",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="First level of every topic: `{root}/{site_id}/...` (one broker, many stacks).",
    )
    mqtt_session_expiry_s: int = Field(
        default=7 * 86400,
        ge=0,
        le=0xFFFFFFFF,
        description="MQTT 5: how long the broker keeps a disconnected bridge's session and "
        "queued messages.",
    )
    mqtt_shared_group: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_-]{0,40}$",
        description="MQTT 5 shared subscription group (`$share/GROUP/...`) for several "
        "bridges to split the load; empty: a plain subscription, which (unlike a shared one, "
        "in Mosquitto 2.0) survives a broker restart.",
    )
    mqtt_batch_size: int = Field(
        default=10_000, ge=1, le=10_000, description="Readings per flushed batch at most."
    )
    mqtt_flush_interval_ms: int = Field(
        default=250,
        ge=1,
        description="A batch is flushed at the latest this long after its first message.",
    )
    mqtt_max_in_flight: int = Field(
        default=20_000,
        ge=1,
        le=65_535,
        description="Messages the bridge holds unacknowledged at most (MQTT 5 receive "
        "maximum); while PostgreSQL is down the broker keeps the rest.",
    )
    mqtt_max_payload_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="A larger message is quarantined."
    )
    mqtt_bridge_port: int = Field(
        default=8082,
        ge=0,
        le=65535,
        description="The bridge's /healthz, /readyz and /metrics (on IRRIGATION_HOST).",
    )

    # Alerts (evaluated every ~10 s by the worker) and their webhook deliveries
    alert_gateway_window_s: int = Field(
        default=600, ge=60, description="A failed activation keeps its alert this long."
    )
    alert_quarantine_window_s: int = Field(
        default=900, ge=60, description="Window of the quarantine-rate alert."
    )
    alert_quarantine_threshold: float = Field(
        default=0.2, gt=0, lt=1, description="Quarantined share of ingested items that alerts."
    )
    alert_quarantine_min_items: int = Field(
        default=20, ge=1, description="Fewer items than this in the window never alert."
    )
    # Under the worker's 30 s job timeout, with room to record the outcomes.
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=20, description="Per delivery.")
    webhook_max_attempts: int = Field(default=8, ge=1, le=50, description="Then `failed`.")
    webhook_backoff_base_s: float = Field(
        default=10.0, gt=0, description="Retry n waits base * 2^(n-1), up to the maximum."
    )
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0)
    webhook_batch_size: int = Field(
        default=50, ge=1, le=1000, description="Deliveries one run sends at once."
    )
    webhook_allow_networks: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="Networks webhooks may reach although they are not public (loopback, "
        "private, link-local, ...), comma-separated CIDRs, e.g. `10.20.0.0/16,fd12::/48`: "
        "on-premises receivers. Empty: public addresses only.",
    )

    @field_validator("webhook_allow_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        # A browser's Origin header is scheme, host and port only: anything else never matches.
        for origin in value:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
        return value

    @field_validator(
        "rate_limit_read",
        "rate_limit_write",
        "rate_limit_ingest",
        "rate_limit_control",
        "rate_limit_expensive",
    )
    @classmethod
    def _parseable_limit(cls, value: str) -> str:
        # A typo must stop the process at start, not fail every request later.
        parse_rate_limit(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        return to_asyncpg_url(value) if value else value

    @property
    def effective_database_url(self) -> str:
        return self.database_url or "postgresql+asyncpg://postgres@127.0.0.1:5432/irrigation"

    @property
    def queue_name(self) -> str:
        """The base of the queues' keys (`{namespace}:queue:pumps`, ...), and the one queue
        of versions before the split (drained by the workers)."""
        return f"{self.redis_namespace}:queue"

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"


@lru_cache
def get_settings() -> Settings:
    return Settings()
