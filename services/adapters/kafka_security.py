"""How drip's Kafka clients authenticate and encrypt: SASL/SCRAM (or PLAIN) and TLS, from
settings, as every managed Kafka needs (issue 6 §9).

One FastStream security object is made from the settings; the broker takes it as it is,
and the raw aiokafka clients (bulk publisher, admin) take the same options through
FastStream's own translation, so all clients connect alike.
"""

from __future__ import annotations

import ssl
from typing import Any

from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from services.settings import Settings

SASL = {"SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512, "PLAIN": SASLPlaintext}


class KafkaSecurityError(ValueError):
    """The Kafka security settings contradict each other (e.g. SASL without a password)."""


def security(settings: Settings) -> BaseSecurity | None:
    """The FastStream security object for `settings`; None for PLAINTEXT.

    Raises `KafkaSecurityError` when SASL is chosen without a username and password.
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    use_ssl = protocol in ("SSL", "SASL_SSL")
    context = _ssl_context(settings) if use_ssl else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
        raise KafkaSecurityError(f"{protocol} needs DRIP_KAFKA_SASL_USERNAME and "
                                 "DRIP_KAFKA_SASL_PASSWORD")
    return SASL[settings.kafka_sasl_mechanism](
        settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context, use_ssl=use_ssl)


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's producer, consumer and admin client."""
    return parse_security(security(settings))


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the broker against `kafka_ssl_cafile` (else the system's CAs); presents a
    client certificate when `kafka_ssl_certfile` is set (mutual TLS)."""
    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(str(settings.kafka_ssl_certfile),
                                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile
                                else None)
    return context
