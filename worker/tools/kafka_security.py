"""What :class:`~worker.tools.apache_kafka.ApacheKafka` adds for ``security=``: a SASL_SSL
listener (SCRAM-SHA-512 users, TLS with the caller's certificate) with ACLs enforced.
tests/integration/kafka_acls.py grants and revokes the ACLs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class KafkaSecurity:
    """A SASL_SSL listener beside the plain one: TLS with ``certfile``/``keyfile`` (PEM, key
    unencrypted), SCRAM-SHA-512 ``users`` (name -> password, set at storage format time), and
    Kafka's StandardAuthorizer, so a principal may do only what an ACL allows.

    The PLAINTEXT and CONTROLLER listeners stay for the harness (readiness, topics, ACLs) and
    the nodes' own traffic; their principal, ``User:ANONYMOUS``, is the super user. A
    deployment would put those behind TLS or SASL too; a test broker on loopback need not.
    """

    certfile: Path
    keyfile: Path
    users: Mapping[str, str] = field(default_factory=dict)

    def overrides(self, keystore: Path) -> dict[str, str]:
        """The broker settings it adds (listeners excepted: they are per node)."""
        return {
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
            ),
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
            "listener.name.sasl_ssl.ssl.keystore.location": str(keystore),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:ANONYMOUS",
        }

    def scram_arguments(self) -> list[str]:
        """``--add-scram`` arguments of ``kafka-storage format``, one per user."""
        out: list[str] = []
        for name, password in self.users.items():
            if re.search(r"[\s,=\[\]\"]", name + password):
                raise ValueError(f"SCRAM user {name!r}: no spaces, commas, '=', '[', ']' or '\"'")
            out += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        return out
