"""Settings (STYLE §6): Kafka security from the environment, passed on to child processes."""

from __future__ import annotations

import ssl

import pytest

from services.adapters.kafka_security import KafkaSecurityError, client_options
from services.settings import Settings


def test_plaintext_needs_no_options() -> None:
    assert client_options(Settings()) == {}


def test_scram_over_tls_gives_every_client_the_same_options() -> None:
    options = client_options(Settings(kafka_security_protocol="SASL_SSL",
                                      kafka_sasl_mechanism="SCRAM-SHA-512",
                                      kafka_sasl_username="drip", kafka_sasl_password="s3cret"))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("drip", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)


def test_sasl_without_a_password_is_refused() -> None:
    with pytest.raises(KafkaSecurityError, match="DRIP_KAFKA_SASL_PASSWORD"):
        client_options(Settings(kafka_security_protocol="SASL_PLAINTEXT",
                                kafka_sasl_username="drip"))


def test_a_child_process_gets_the_secret_itself_not_its_mask() -> None:
    env = Settings(kafka_sasl_password="s3cret").as_env()
    assert env["DRIP_KAFKA_SASL_PASSWORD"] == "s3cret"
    assert "DRIP_KAFKA_SSL_CAFILE" not in env
