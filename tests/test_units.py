"""Pure logic: naming, topology arguments, decoding checks, URLs, settings, seed names."""
from __future__ import annotations

import pickle
from importlib.metadata import entry_points

import kombu
import pytest
from celery import Celery
from celery.app.backends import by_url
from kombu.serialization import dumps

import celery_amqp_results
from celery_amqp_results import AMQPBackend, BacklogLimitExceeded, InvalidTaskIdError
from celery_amqp_results.codec import decode_state
from celery_amqp_results.connection import is_bare, sanitize
from celery_amqp_results.errors import InvalidResultError
from celery_amqp_results.naming import Names
from celery_amqp_results.settings import Settings
from celery_amqp_results.topology import NoCacheQueue, Topology

URL = "amqp://alice:s3cret@127.0.0.1:5672/somevhost"


def offline_app(**conf: object) -> Celery:
    app = Celery("units", broker=URL, backend=URL, set_as_current=False)
    app.conf.update(**conf)
    return app


class TestNames:
    names = Names("celery-results.")

    def test_task_queue_and_routing_key(self) -> None:
        assert self.names.task_queue("abc") == "celery-results.task.abc"
        assert self.names.group_queue("abc") == "celery-results.group.abc"
        assert self.names.routing_key("abc") == "abc"

    @pytest.mark.parametrize("bad", ["", None, 42, b"bytes-id", ["x"]])
    def test_rejects_empty_and_non_strings(self, bad: object) -> None:
        with pytest.raises(InvalidTaskIdError) as info:
            self.names.task_queue(bad)
        assert "task id" in str(info.value)

    def test_rejects_ids_too_long_for_a_queue_name(self) -> None:
        longest = "x" * (255 - len("celery-results.task."))
        assert self.names.task_queue(longest).endswith(longest)
        with pytest.raises(InvalidTaskIdError, match="too long: 236 bytes, at most 235"):
            self.names.task_queue(longest + "x")

    def test_length_counts_utf8_bytes(self) -> None:
        with pytest.raises(InvalidTaskIdError, match="too long"):
            self.names.task_queue("é" * 120)


class TestTopology:
    def topology(self, expires: object = 86400.0, persistent: bool = True) -> Topology:
        return Topology(Names("p."), "celeryresults", "direct", expires, persistent)

    def test_queue_keeps_newest_state_and_expires(self) -> None:
        queue = self.topology().storage_queue("p.task.x")
        assert isinstance(queue, NoCacheQueue) and not queue.can_cache_declaration
        assert queue.durable and not queue.auto_delete
        assert queue.queue_arguments == {
            "x-max-length": 1, "x-overflow": "drop-head", "x-expires": 86400000}

    def test_expiry_follows_result_expires(self) -> None:
        assert self.topology(1.5).expires_ms == 1500
        assert self.topology(1.5).queue_arguments["x-expires"] == 1500
        assert self.topology(None).expires is None
        assert "x-expires" not in self.topology(None).queue_arguments

    def test_delivery_mode_follows_persistence(self) -> None:
        assert self.topology(persistent=True).delivery_mode == 2
        assert self.topology(persistent=False).delivery_mode == 1

    def test_headers_exchange_refused(self) -> None:
        with pytest.raises(ValueError, match="headers"):
            Topology(Names("p."), "x", "headers", None, True)

    def test_mismatch_names_the_setting(self) -> None:
        text = ("Queue.declare: (406) PRECONDITION_FAILED - inequivalent arg 'x-expires' "
                "for queue 'p.task.x' in vhost '/': received '1000' but current is '60000'")
        message = self.topology(1.0).explain_mismatch("p.task.x", text)
        assert "result_expires" in message and "'x-expires'" in message
        assert "p.task.x" in message


class TestDecode:
    def body(self, payload: object, serializer: str = "json"):
        content_type, encoding, body = dumps(payload, serializer=serializer)
        return body, content_type, encoding

    def test_good_state(self) -> None:
        body, ctype, enc = self.body({"status": "SUCCESS", "result": 1, "task_id": "t"})
        meta = decode_state("t", "q", body, ctype, enc, {"application/json"})
        assert meta["result"] == 1

    def test_garbage_names_task_and_queue(self) -> None:
        with pytest.raises(InvalidResultError) as info:
            decode_state("t1", "q1", b"\xff\xfe not json", "application/json", "utf-8",
                         {"application/json"})
        assert "'t1'" in str(info.value) and "'q1'" in str(info.value)
        assert info.value.task_id == "t1"

    def test_disallowed_content_type(self) -> None:
        body, ctype, enc = self.body({"status": "SUCCESS", "result": 1}, "pickle")
        with pytest.raises(InvalidResultError, match="result_accept_content does not allow"):
            decode_state("t", "q", body, ctype, enc, {"application/json"})

    @pytest.mark.parametrize("payload,cause", [
        ({"result": 1}, "lacks the field"),
        ({"status": "SUCCESS"}, "lacks the field"),
        ([1, 2], "not a mapping"),
        ({"status": "", "result": 1}, "invalid status"),
        ({"status": "SUCCESS", "result": 1, "task_id": "other"}, "belongs to task"),
    ])
    def test_missing_or_wrong_fields(self, payload: object, cause: str) -> None:
        body, ctype, enc = self.body(payload)
        with pytest.raises(InvalidResultError, match=cause):
            decode_state("t", "q", body, ctype, enc, {"application/json"})


class TestUrls:
    @pytest.mark.parametrize("url", [None, "", "amqp://", "amqps://", "amqp:///"])
    def test_bare(self, url: object) -> None:
        assert is_bare(url)  # type: ignore[arg-type]

    def test_not_bare(self) -> None:
        assert not is_bare("amqp://host")

    def test_sanitize_masks_every_password(self) -> None:
        masked = sanitize("amqp://u:p1@a:5672/v;amqp://u:p2@b:5672/v")
        assert "p1" not in masked and "p2" not in masked and masked.count("**") == 2

    def test_as_uri_masks_password(self) -> None:
        backend = offline_app().backend
        assert backend.as_uri() == "amqp://alice:**@127.0.0.1:5672/somevhost"
        assert backend.as_uri(include_password=True) == URL
        assert "s3cret" not in repr(backend.as_uri())

    def test_url_is_honoured(self) -> None:
        template = offline_app().backend._template
        assert template.virtual_host == "somevhost"
        assert template.userid == "alice" and template.hostname == "127.0.0.1"
        assert template.transport_options["confirm_publish"] is True

    def test_amqps_means_tls(self) -> None:
        app = Celery("u", broker=URL, backend="amqps://u:p@h:5671/v", set_as_current=False)
        assert app.backend._template.ssl

    def test_amqps_without_port_is_described_as_5671(self) -> None:
        from celery_amqp_results.connection import describe

        app = Celery("u", broker=URL, backend="amqps://u:p@h/v", set_as_current=False)
        assert "h:5671 vhost 'v'" in describe(app.backend._template)

    def test_bare_url_reuses_broker(self) -> None:
        app = Celery("u", broker=URL, backend="amqp://", set_as_current=False)
        template = app.backend._template
        assert (template.hostname, template.virtual_host) == ("127.0.0.1", "somevhost")
        assert app.backend.as_uri() == "amqp://"

    def test_bare_url_with_non_amqp_broker_is_refused(self) -> None:
        app = Celery("u", broker="redis://127.0.0.1:6379/0", backend="amqp://",
                     set_as_current=False)
        with pytest.raises(Exception, match="not RabbitMQ"):
            app.backend  # noqa: B018


class TestSelection:
    def test_entry_points_registered(self) -> None:
        found = entry_points()
        group = (found.select(group="celery.result_backends") if hasattr(found, "select")
                 else found.get("celery.result_backends", ()))  # Python 3.9
        eps = {ep.name: ep.value for ep in group}
        assert eps["amqp"] == eps["amqps"] == "celery_amqp_results:AMQPBackend"

    @pytest.mark.parametrize("url", [URL, "amqps://u:p@h/v",
                                     "celery_amqp_results:AMQPBackend+" + URL])
    def test_urls_select_our_class(self, url: str) -> None:
        cls, _ = by_url(url, offline_app().loader)
        assert cls is AMQPBackend


class TestSeedApi:
    def test_every_seed_name_exists(self) -> None:
        for name in ["BacklogLimitExceeded", "Exchange", "Queue", "Consumer", "Producer",
                     "persistent", "retry_policy", "supports_autoexpire",
                     "supports_native_join", "store_result", "get_task_meta", "poll",
                     "wait_for", "consume", "get_many", "drain_events", "destination_for",
                     "rkey", "on_reply_declare", "revive", "save_group", "restore_group",
                     "delete_group", "reload_group_result", "reload_task_result", "as_uri"]:
            assert hasattr(AMQPBackend, name), name
        assert celery_amqp_results.BacklogLimitExceeded is AMQPBackend.BacklogLimitExceeded
        assert issubclass(BacklogLimitExceeded, Exception)
        assert AMQPBackend.Exchange is kombu.Exchange
        assert issubclass(AMQPBackend.Queue, kombu.Queue)
        assert AMQPBackend.Queue.can_cache_declaration is False
        assert AMQPBackend.supports_autoexpire and AMQPBackend.supports_native_join
        assert AMQPBackend.poll == AMQPBackend.get_task_meta

    def test_retry_policy_is_copied_per_instance(self) -> None:
        a, b = offline_app().backend, offline_app().backend
        assert a.retry_policy == {"max_retries": 20, "interval_start": 0,
                                  "interval_step": 1, "interval_max": 1}
        a.retry_policy["max_retries"] = 1
        assert b.retry_policy["max_retries"] == 20
        assert AMQPBackend.retry_policy["max_retries"] == 20

    def test_constructor_arguments(self) -> None:
        app = offline_app()
        backend = AMQPBackend(app, exchange="myres", exchange_type="topic", persistent=False,
                              serializer="pickle", auto_delete=False, url=URL)
        assert (backend.exchange.name, backend.exchange.type) == ("myres", "topic")
        assert backend.persistent is False and backend.topology.delivery_mode == 1
        assert backend.serializer == "pickle" and backend.auto_delete is False

    def test_rkey_destination_and_declare(self) -> None:
        backend = offline_app().backend
        assert backend.rkey("t-1") == "t-1"
        assert backend.destination_for("t-1", None) == ("celery-results.task.t-1", "t-1")
        (queue,) = backend.on_reply_declare("t-1")
        assert queue.name == "celery-results.task.t-1"

    def test_pickles_with_its_settings(self) -> None:
        app = offline_app(result_expires=120)
        backend = AMQPBackend(app, exchange="xr", persistent=False, url=URL)
        clone = pickle.loads(pickle.dumps(backend))
        assert clone.url == URL and clone.exchange.name == "xr"
        assert clone.persistent is False and clone.expires == 120


class TestSettings:
    def test_defaults(self) -> None:
        settings = Settings.from_conf({})
        assert settings.queue_prefix == "celery-results."
        assert settings.peek_grace == 0.5
        assert settings.peek_attempts == 64
        assert settings.read_timeout == 2.0

    def test_bad_values_are_named(self) -> None:
        with pytest.raises(ValueError, match="amqp_results_peek_grace"):
            Settings.from_conf({"amqp_results_peek_grace": -1})
        for bad in (0, -1, 2.5, "3", True):
            with pytest.raises(ValueError, match="amqp_results_peek_attempts"):
                Settings.from_conf({"amqp_results_peek_attempts": bad})
        for bad in (-1, "soon", float("nan"), True):
            with pytest.raises(ValueError, match="amqp_results_read_timeout"):
                Settings.from_conf({"amqp_results_read_timeout": bad})
        assert Settings.from_conf({"amqp_results_read_timeout": "0.5"}).read_timeout == 0.5
        with pytest.raises(TypeError, match="amqp_results_queue_prefix"):
            Settings.from_conf({"amqp_results_queue_prefix": 5})
        for bad in (0, -5, "big", 1.5, True):
            with pytest.raises(ValueError, match="amqp_results_max_result_size"):
                Settings.from_conf({"amqp_results_max_result_size": bad})
        assert Settings.from_conf({"amqp_results_max_result_size": None}).max_result_size \
            is None
        assert Settings.from_conf({}).max_result_size == 128 * 1024 * 1024
        import ssl

        with pytest.raises(TypeError, match="amqp_results_ssl"):
            Settings.from_conf({"amqp_results_ssl": ssl.create_default_context()})
        assert Settings.from_conf({"amqp_results_ssl": {"ca_certs": "x"}}).ssl == {
            "ca_certs": "x"}


def test_supported_versions_table_is_what_ci_runs() -> None:
    """README's supported-versions table, scripts/test.sh's runs and pyproject.toml agree."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = root.joinpath("README.md").read_text()
    section = readme.split("## Supported versions", 1)[1].split("\n## ", 1)[0]
    table = {(row[0], row[1], row[2], row[3])
             for row in (line.strip("| ").split(" | ") for line in section.splitlines()
                         if line.startswith("| rabbitmq-"))}
    script = root.joinpath("scripts", "test.sh").read_text()
    runs = set()
    for name, python, celery in re.findall(
            r'run_suite (rabbitmq-[\d.]+) ([\d.]+) "celery==([\d.]+)\.\*"', script):
        runs.add((name, python, celery, name.split("-", 1)[1]))
    assert runs and table == runs, (table, runs)
    pyproject = root.joinpath("pyproject.toml").read_text()
    pythons = sorted({row[1] for row in runs}, key=lambda v: tuple(map(int, v.split("."))))
    celeries = sorted({row[2] for row in runs}, key=lambda v: tuple(map(int, v.split("."))))
    assert f'requires-python = ">={pythons[0]}"' in pyproject
    low, high = re.search(r'"celery>=([\d.]+),<([\d.]+)"', pyproject).groups()
    assert low == celeries[0]
    assert tuple(map(int, celeries[-1].split("."))) < tuple(map(int, high.split(".")))
    for python in pythons:
        assert f'"Programming Language :: Python :: {python}"' in pyproject
