"""The ``kafka`` section: how to reach the brokers and what the topics are called."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from monolith_ray.config.loader import ConfigError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]

_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
_PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_BROKER_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")
_MAX_PARTITIONS = 10_000


@dataclasses.dataclass(frozen=True)
class KafkaTopics:
    """The names of the topics the loop uses; all distinct, each a legal Kafka topic name.

    - ``features``: request features logged by serving.
    - ``actions``: user actions (clicks, ...) logged by serving's feedback endpoint.
    - ``examples``: joined training examples written by the online joiner.
    - ``dead_letter``: messages that failed validation, with the reason.
    """

    features: str = "features"
    actions: str = "actions"
    examples: str = "examples"
    dead_letter: str = "dead_letter"

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for field in dataclasses.fields(self):
            name = getattr(self, field.name)
            if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
                raise ConfigError(
                    field.name, f"must be 1-249 of [A-Za-z0-9._-] (not . or ..), got {name!r}"
                )
            if name in seen:
                raise ConfigError(field.name, f"topic {name!r} is also {seen[name]}'s")
            seen[name] = field.name

    def names(self) -> list[str]:
        """Every topic name, in field order."""
        return [getattr(self, field.name) for field in dataclasses.fields(self)]


@dataclasses.dataclass(frozen=True)
class KafkaConfig:
    """How to reach Kafka and what the topics are called.

    - ``bootstrap_servers``: comma-separated ``host:port`` list; empty = start the embedded
      broker (:func:`kafka_session`).
    - ``security_protocol``: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    - ``sasl_mechanism``: required with a SASL protocol, refused without one; PLAIN and SCRAM
      need ``sasl_plain_username`` and ``sasl_plain_password`` (kafka-python's names for both).
    - ``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile``: PEM files, only with an SSL protocol;
      a key file needs its certificate file. Paths are not checked here: the config may be
      built on a machine other than the one that connects.
    - ``partitions``: partition count of topics this project creates.
    - ``client_id``: sent to the brokers with every request (shows in their logs and quotas).
    """

    bootstrap_servers: str = ""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = dataclasses.field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    topics: KafkaTopics = dataclasses.field(default_factory=KafkaTopics)
    partitions: int = 2
    client_id: str = "monolith_ray"

    def __post_init__(self) -> None:
        for address in filter(None, (a.strip() for a in self.bootstrap_servers.split(","))):
            match = _BROKER_ADDRESS.fullmatch(address)
            if match is None or not 1 <= int(match[2]) <= 65535:
                raise ConfigError(
                    "bootstrap_servers", f"each entry must be host:port, got {address!r}"
                )
        if self.security_protocol not in _PROTOCOLS:
            raise ConfigError(
                "security_protocol",
                f"must be one of {', '.join(_PROTOCOLS)}, got {self.security_protocol!r}",
            )
        self._check_sasl()
        self._check_ssl()
        if not 1 <= self.partitions <= _MAX_PARTITIONS:
            raise ConfigError(
                "partitions", f"must be >= 1 and <= {_MAX_PARTITIONS}, got {self.partitions!r}"
            )
        if not self.client_id:
            raise ConfigError("client_id", "must not be empty")

    def _check_sasl(self) -> None:
        sasl = self.security_protocol.startswith("SASL_")
        if not sasl:
            for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, f"set, but security_protocol is "
                                            f"{self.security_protocol} (needs SASL_PLAINTEXT "
                                            f"or SASL_SSL)")
            return
        if self.sasl_mechanism not in _SASL_MECHANISMS:
            raise ConfigError("sasl_mechanism", f"must be one of {', '.join(_SASL_MECHANISMS)} "
                                                f"with {self.security_protocol}, "
                                                f"got {self.sasl_mechanism!r}")
        if self.sasl_mechanism in _PASSWORD_MECHANISMS:
            for name in ("sasl_plain_username", "sasl_plain_password"):
                if not getattr(self, name):
                    raise ConfigError(name, f"required with sasl_mechanism {self.sasl_mechanism}")

    def _check_ssl(self) -> None:
        ssl = self.security_protocol in ("SSL", "SASL_SSL")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None and not ssl:
                raise ConfigError(name, f"set, but security_protocol is {self.security_protocol} "
                                        f"(needs SSL or SASL_SSL)")
            if value == "":
                raise ConfigError(name, "must not be empty (leave it unset instead)")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigError("ssl_keyfile", "set without ssl_certfile")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any kafka-python client (producer, consumer, admin):
        brokers, client id and the security settings that are set (None ones are left out,
        so kafka-python's defaults apply)."""
        if not self.bootstrap_servers:
            raise ConfigError("bootstrap_servers", "empty: start the embedded broker with "
                                                   "kafka_session() and use the address it yields")
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                     "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs
