"""One settings object for the whole process, read from `DRIP_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Endpoints and knobs. `DRIP_KAFKA_BOOTSTRAP`, `DRIP_DATABASE_URL`, `DRIP_TOPIC_PREFIX`..."""

    model_config = SettingsConfigDict(env_prefix="DRIP_", extra="forbid")

    kafka_bootstrap: str = Field("127.0.0.1:19092", description="host:port of a Kafka broker")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client connects")
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = Field(
        "SCRAM-SHA-256", description="SASL mechanism, with SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) that signed the "
                                          "broker's certificate; default: the system's CAs")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (PEM), for "
                                            "mutual TLS")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client certificate's key (PEM)")
    database_url: str = Field("postgresql://drip:drip@127.0.0.1:54329/drip",
                              description="PostgreSQL URL of the event store and read models")
    topic_prefix: str = Field("drip", description="Prefix of every topic name")
    consumer_prefix: str = Field("drip", description="Prefix of consumer group names")
    batch_size: int = Field(2000, description="Kafka records per handler batch")
    timer_batch: int = Field(5000, description="Timers claimed per timer-service round")
    replay_chunk: int = Field(20000, description="Upstream events per replay chunk (demo)")
    idle_seconds: float = Field(1.0, description="Longest wait of an idle loop between checks, "
                                "when no NOTIFY woke it (seconds)")
    partitions: int = Field(4, ge=1, description="Partitions of the topics drip creates")
    replication_factor: int = Field(1, ge=1, description="Replication factor of drip's topics")
    graceful_seconds: float = Field(15.0, description="How long a stopping consumer lets its "
                                    "in-flight batch finish (seconds)")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged")
    log_format: Literal["auto", "console", "json"] = Field(
        "auto", description="`json`: one JSON object per line; `console`: readable lines; "
        "`auto`: console on a terminal, else JSON (services under a supervisor, CI)")
    dataset_csv: Path | None = Field(None, description="The appointments CSV `drip demo` replays")
    # -- channel gateways (§6) --------------------------------------------------------
    smtp_host: str = Field("127.0.0.1", description="SMTP server of the e-mail gateway")
    smtp_port: int = Field(2525, description="SMTP port (587 with STARTTLS in production)")
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS")
    smtp_username: str | None = Field(None, description="SMTP AUTH user")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password")
    smtp_from: str = Field("drip <no-reply@drip.example>", description="E-mail sender")
    provider_url: str = Field("http://127.0.0.1:8625", description="HTTP SMS/WhatsApp "
                              "provider's base URL (POST {url}/v1/messages)")
    provider_name: str = Field("relay", description="Name of the HTTP provider (receipts, "
                               "webhook path)")
    provider_secret: SecretStr = Field(SecretStr("provider-secret"), description="HMAC-SHA256 "
                                       "key that signs requests to the provider")
    webhook_secret: SecretStr = Field(SecretStr("webhook-secret"), description="HMAC-SHA256 "
                                      "key the provider signs delivery callbacks with")
    gateway_host: str = Field("127.0.0.1", description="Where the gateway's webhook server "
                              "listens")
    gateway_port: int = Field(8626, description="Port of the gateway's webhook server")
    gateway_attempts: int = Field(3, ge=1, description="Attempts per message (§6), then failed")
    gateway_timeout_seconds: float = Field(5.0, description="Per-attempt timeout (seconds)")
    gateway_concurrency: int = Field(32, ge=1, description="Messages in flight per gateway")
    gateway_rate: float = Field(200.0, gt=0, description="Default §5 throughput per clinic and "
                                "channel (messages per second) across all gateway instances")
    api_host: str = Field("127.0.0.1", description="Where `drip api` / `drip serve` listen "
                          "for HTTP (the API, the dashboard, /metrics)")
    api_port: int = Field(8600, description="Port of the HTTP API")
    unsubscribe_url: str = Field("https://drip.example/u", description="Base of the "
                                 "`unsubscribe_url` merge field")

    @property
    def upstream_group(self) -> str:
        """Consumer group of the upstream subscriber (its positions are kept under it)."""
        return f"{self.consumer_prefix}.upstream"

    @property
    def step_due_group(self) -> str:
        """Consumer group of the `step.due` subscriber."""
        return f"{self.consumer_prefix}.step-due"

    @property
    def receipts_group(self) -> str:
        """Consumer group of the delivery-receipt subscriber."""
        return f"{self.consumer_prefix}.receipts"

    def gateway_group(self, channels: tuple[str, ...]) -> str:
        """Consumer group of a gateway for these channels (each set has its own)."""
        return f"{self.consumer_prefix}.gateway.{'-'.join(sorted(channels))}"

    def as_env(self) -> dict[str, str]:
        """These settings as `DRIP_*` variables, secrets included (for a child process)."""
        env = {}
        for name, value in self.model_dump(exclude_none=True).items():
            secret = value.get_secret_value() if isinstance(value, SecretStr) else value
            env[f"DRIP_{name.upper()}"] = str(secret)
        return env
