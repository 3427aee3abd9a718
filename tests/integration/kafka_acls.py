"""ACLs on the Apache Kafka of the tests (``ApacheKafka(security=...)``, whose StandardAuthorizer
lets a principal do only what an ACL allows), granted through Kafka's Admin API (CreateAcls)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest

from worker import kafka

# Kafka's ACL codes (org.apache.kafka.common.acl / resource), as CreateAcls sends them.
RESOURCE_TYPES: Final = {"topic": 2, "group": 3, "cluster": 4}
OPERATIONS: Final = {
    "READ": 3,
    "WRITE": 4,
    "CREATE": 5,
    "DESCRIBE": 8,
    "IDEMPOTENT_WRITE": 12,
}
ALLOW: Final = 3
LITERAL: Final = 3
CLUSTER_NAME: Final = "kafka-cluster"


@dataclass(frozen=True)
class Acl:
    """Allow ``principal`` (``User:<name>``) ``operation`` on one resource, from any host."""

    principal: str
    resource: str  # topic, group or cluster
    name: str
    operation: str

    def fields(self) -> tuple[int, str, int, str, str, int, int]:
        """The CreateAcls (v1) entry: literal pattern, any host, allow."""
        return (
            RESOURCE_TYPES[self.resource],
            CLUSTER_NAME if self.resource == "cluster" else self.name,
            LITERAL,
            self.principal,
            "*",
            OPERATIONS[self.operation],
            ALLOW,
        )


async def grant(bootstrap: str, acls: Iterable[Acl]) -> None:
    """Create ``acls`` with CreateAcls, one request per ACL, as the super user: over the plain
    listener at ``bootstrap`` (aiokafka's admin client has the request but no public method
    that sends it)."""
    client = kafka.admin(bootstrap)
    await client.start()
    try:
        responses = [await client._send_request(CreateAclsRequest(*acl.fields())) for acl in acls]
    finally:
        await client.close()
    for response in responses:
        for code, message in response.creation_responses:
            if code:
                raise for_code(code)(f"create ACL: {message}")
