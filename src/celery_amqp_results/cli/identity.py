"""Whether the management API ``doctor`` asks belongs to the broker the backend uses.

doctor finds the API at the AMQP host on port 15672 (or at
``amqp_results_management_url``).  With two brokers on one host, a port-forward or a
typo, that is another broker's API, and every finding would describe that broker.
Both sides say who they are: AMQP's ``connection.start`` carries the cluster name
and version, the API's overview the cluster name, version and listeners.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from kombu import Connection

from ..connection import broker_error, failures
from .findings import OK, PROBLEM, WARNING, Finding

#: Listener protocols the management API reports for plain and TLS AMQP 0-9-1.
AMQP_PROTOCOLS = {"amqp", "amqp/ssl"}


@dataclass
class BrokerIdentity:
    """Who the AMQP broker at ``host:port`` says it is, when a connection opens."""

    host: str
    port: int
    cluster_name: Optional[str]
    version: Optional[str]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _text(value: Any) -> Optional[str]:
    """A server property as text (py-amqp may hand bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def reach(connection: Connection, retry_policy: Mapping[str, Any]) -> BrokerIdentity:
    """Connect to the configured AMQP broker and read who it is.

    Raises ResultBrokerError naming host, port, vhost and user when it cannot be
    reached or refuses the login: nothing else doctor says would be about it.
    """
    try:
        connection.ensure_connection(
            max_retries=retry_policy.get("max_retries", 2),
            interval_start=retry_policy.get("interval_start", 0.5),
            interval_step=retry_policy.get("interval_step", 0.5),
            interval_max=retry_policy.get("interval_max", 1))
        properties: Dict[str, Any] = dict(connection.connection.server_properties or {})
    except failures(connection) as exc:
        raise broker_error(connection, exc) from exc
    finally:
        connection.close()
    port = connection.port or (5671 if connection.ssl else 5672)
    return BrokerIdentity(host=connection.hostname or "localhost", port=int(port),
                          cluster_name=_text(properties.get("cluster_name")),
                          version=_text(properties.get("version")))


def amqp_ports(overview: Mapping[str, Any]) -> List[int]:
    """The AMQP listener ports the management API reports, in order."""
    return sorted({int(listener["port"]) for listener in overview.get("listeners") or ()
                   if listener.get("protocol") in AMQP_PROTOCOLS and "port" in listener})


def check_identity(broker: BrokerIdentity, overview: Mapping[str, Any], api: str,
                   user: str) -> Finding:
    """``ok`` when the API reports the broker's cluster name and an AMQP listener on its
    port (or shows ``user`` no listeners); ``problem`` when it names another cluster;
    ``warning`` when it cannot tell."""
    api_cluster = _text(overview.get("cluster_name"))
    ports = amqp_ports(overview)
    listed = ", ".join(str(port) for port in ports) or "none reported"
    theirs = (f"the management API at {api} reports cluster {api_cluster!r} "
              f"(node {overview.get('node', '?')}, RabbitMQ "
              f"{overview.get('rabbitmq_version', '?')}, AMQP listeners: {listed})")
    ours = (f"the AMQP broker at {broker.address} is cluster {broker.cluster_name!r} "
            f"(RabbitMQ {broker.version or '?'})")
    if not api_cluster or not broker.cluster_name:
        return Finding(WARNING, "identity",
                       f"could not check that the management API belongs to the AMQP "
                       f"broker at {broker.address}: {theirs}; {ours}",
                       "Make sure amqp_results_management_url points at this broker's "
                       "management API.")
    if api_cluster != broker.cluster_name:
        return Finding(PROBLEM, "identity", f"{theirs}, but {ours}: the management API "
                       f"is another broker's, so nothing it says is checked",
                       f"Set amqp_results_management_url to the management API of the "
                       f"broker at {broker.address}, or fix result_backend if it names "
                       f"the wrong broker.")
    if "listeners" not in overview:
        return Finding(OK, "identity", f"{theirs}: the same cluster name as the AMQP "
                       f"broker at {broker.address} (its listeners are not shown to user "
                       f"{user!r} without the 'monitoring' tag: only the name was compared)")
    if broker.port not in ports:
        return Finding(WARNING, "identity",
                       f"{theirs}; {ours}: the same cluster name, but no AMQP listener on "
                       f"port {broker.port} (a proxy or port-forward?), so it could not "
                       f"be checked that both are the same broker",
                       "If RabbitMQ is reached through a proxy this is expected; else set "
                       "amqp_results_management_url to this broker's management API.")
    return Finding(OK, "identity", f"{theirs}: the same broker as the AMQP one at "
                                   f"{broker.address}")
