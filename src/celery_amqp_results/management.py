"""RabbitMQ's management HTTP API, for what AMQP 0-9-1 cannot do: list queues, read broker facts.

Used by ``celery amqp-results purge`` and ``doctor``.  The API root is derived from
the result backend's connection (same host and credentials, port 15672, or 15671
over TLS) unless ``amqp_results_management_url`` names it.  Every error is one
line naming the API root and the user, never the password.
"""
from __future__ import annotations

import base64
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional

#: Management API ports RabbitMQ listens on by default, plain and TLS.
HTTP_PORT = 15672
HTTPS_PORT = 15671

#: Largest page the API serves when listing queues.
PAGE_SIZE = 500

#: Seconds to wait for one answer of the API.
DEFAULT_TIMEOUT = 30.0


class ManagementError(Exception):
    """The management API could not be used; the message is one line for a person."""


@dataclass(frozen=True)
class ManagementAPI:
    """A client for one vhost on one management API root (``http://host:15672/``)."""

    root: str
    user: str
    password: str = field(repr=False)
    vhost: str
    timeout: float = DEFAULT_TIMEOUT

    # -- what the commands ask -------------------------------------------------------------

    def overview(self) -> Dict[str, Any]:
        """Broker version, Erlang version, node name and whether stats are collected."""
        return self.get("overview")

    def vhost_info(self) -> Dict[str, Any]:
        """This vhost's record, including its ``default_queue_type`` (RabbitMQ 3.11+)."""
        return self.get(f"vhosts/{self._quoted_vhost}", what=f"vhost {self.vhost!r}")

    def nodes(self) -> List[Dict[str, Any]]:
        """Every cluster node with its memory and Erlang process use and limits."""
        return self.get("nodes")

    def feature_flags(self) -> List[Dict[str, Any]]:
        """The broker's feature flags with their state (``enabled`` or ``disabled``)."""
        return self.get("feature-flags")

    def deprecated_features_used(self) -> Optional[List[Dict[str, Any]]]:
        """Deprecated features in use on the broker; None before RabbitMQ 3.13 (no such API)."""
        try:
            return self.get("deprecated-features/used")
        except NotFoundError:
            return None

    def queues(self, prefix: str, columns: Iterable[str]) -> List[Dict[str, Any]]:
        """Every queue of this vhost whose name starts with ``prefix``, page by page.

        Queues created or deleted while the pages are read may be missed or seen
        twice; each name is returned once.
        """
        wanted = sorted(set(columns) | {"name"})
        found: Dict[str, Dict[str, Any]] = {}
        page = 1
        while True:
            reply = self.get(f"queues/{self._quoted_vhost}", {
                "page": page, "page_size": PAGE_SIZE, "name": "^" + re.escape(prefix),
                "use_regex": "true", "columns": ",".join(wanted),
            }, what=f"vhost {self.vhost!r}")
            for queue in reply.get("items", []):
                # The broker's regex filter narrows the pages; this check is the one relied on.
                if queue.get("name", "").startswith(prefix):
                    found.setdefault(queue["name"], queue)
            if page >= int(reply.get("page_count") or 0):
                return list(found.values())
            page += 1

    # -- HTTP ------------------------------------------------------------------------------

    @property
    def _quoted_vhost(self) -> str:
        return urllib.parse.quote(self.vhost, safe="")

    def get(self, path: str, params: Optional[Mapping[str, Any]] = None,
            what: str = "") -> Any:
        """GET ``api/<path>`` and decode its JSON, or raise ManagementError saying why."""
        url = urllib.parse.urljoin(self.root, "api/" + path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, headers={
            "Authorization": "Basic " + base64.b64encode(
                f"{self.user}:{self.password}".encode()).decode("ascii"),
            "Accept": "application/json",
        })
        where = f"RabbitMQ's management API at {self.root} (user {self.user!r})"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                body = reply.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc.code, where, path, what) from None
        except urllib.error.URLError as exc:
            raise ManagementError(
                f"cannot reach {where}: {exc.reason}; enable the plugin with "
                f"`rabbitmq-plugins enable rabbitmq_management`, or set "
                f"amqp_results_management_url to where the API is") from None
        except (socket.timeout, TimeoutError):
            raise ManagementError(
                f"{where} did not answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise ManagementError(f"cannot reach {where}: {exc}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise ManagementError(
                f"{where} did not answer {path!r} with JSON: is that the management "
                f"API's root?") from None

    def _http_error(self, code: int, where: str, path: str, what: str) -> ManagementError:
        if code == 401:
            return RefusedError(
                f"{where} refused {path!r} (HTTP 401): a wrong password, or user tags "
                f"that do not allow it ('management' may list queues, 'monitoring' also "
                f"read nodes, 'administrator' everything; rabbitmqctl set_user_tags)")
        if code == 403:
            return RefusedError(
                f"{where} refused access to {what or path!r} (HTTP 403): the user needs "
                f"permissions on vhost {self.vhost!r}")
        if code == 404:
            return NotFoundError(f"{where} has no {what or path!r} (HTTP 404)")
        return ManagementError(f"{where} answered HTTP {code} for {path!r}")


class NotFoundError(ManagementError):
    """The API answered 404: no such vhost, or an endpoint this broker version lacks."""


class RefusedError(ManagementError):
    """The API answered 401 or 403: wrong credentials, or a user tag too weak for that path.

    A user tagged ``management`` may list queues but not read nodes, feature flags
    or vhost records (``monitoring`` or ``administrator`` may).
    """


def management_api(connection: Any, vhost: str, override: Optional[str] = None,
                   timeout: float = DEFAULT_TIMEOUT) -> ManagementAPI:
    """The API for the broker of ``connection`` (a kombu Connection), on ``vhost``.

    ``override`` (``amqp_results_management_url``) is the API root, with or
    without credentials; without them the connection's user and password are used.
    """
    user = connection.userid or "guest"
    password = connection.password or "guest"
    if override:
        parts = urllib.parse.urlsplit(override)
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
        host = parts.hostname or ""
        netloc = _bracketed(host) + (f":{parts.port}" if parts.port else "")
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        root = urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))
    else:
        tls = bool(connection.ssl)
        scheme, port = ("https", HTTPS_PORT) if tls else ("http", HTTP_PORT)
        root = f"{scheme}://{_bracketed(connection.hostname or 'localhost')}:{port}/"
    return ManagementAPI(root=root, user=user, password=password, vhost=vhost,
                         timeout=timeout)


def _bracketed(host: str) -> str:
    """An IPv6 address in brackets, as URLs write it; other hosts as they are."""
    return f"[{host}]" if ":" in host else host
