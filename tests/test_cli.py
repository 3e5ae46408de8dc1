"""``celery amqp-results``: each subcommand run against a real worker's results.

Commands run through click's test runner with the test app, or as
``python -m celery -A tests.tasks_app amqp-results ...`` subprocesses (which
also proves the ``celery.commands`` entry point).  The management API is the
shared node's (rabbitmq_management, enabled by scripts/bootstrap.sh).
"""
from __future__ import annotations

import base64
import json
import os
import pty
import re
import select
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from celery import group, states
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_amqp_results.cli import amqp_results
from tests import broker
from tests.conftest import ROOT, make_app
from tests.private_node import PrivateNode, free_port

#: What every worker task of these tests may take, at most.
WAIT = 60


@pytest.fixture(scope="module")
def tasks(worker: subprocess.Popen) -> Any:
    from tests import tasks_app
    return tasks_app


def cli(app: Any, *args: str) -> Result:
    """Run ``celery amqp-results ARGS`` in-process with ``app`` as ``-A`` would give it."""
    return CliRunner().invoke(amqp_results, list(args),
                              obj=CLIContext(app=app, no_color=True, workdir=None))


def celery_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m celery -A tests.tasks_app amqp-results ARGS`` against ``url``."""
    env = dict(os.environ, CAR_TEST_URL=url, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.tasks_app", "amqp-results", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT)


def finished(tasks: Any) -> Tuple[str, str, str]:
    """Ids of a finished add(2, 2), a finished fail(<unique message>), and that message."""
    ok = tasks.add.delay(2, 2)
    message = f"boom-{uuid.uuid4().hex[:8]}"
    bad = tasks.fail.delay(message)
    assert ok.get(timeout=WAIT) == 4
    with pytest.raises(ValueError):
        bad.get(timeout=WAIT)
    return ok.id, bad.id, message


def saved_group(tasks: Any, *signatures: Any) -> Any:
    """Send ``group(signatures)`` to the worker and save it, as a user would to watch it."""
    result = group(list(signatures)).apply_async()
    result.save()
    return result


# -- peek ------------------------------------------------------------------------------------

def test_peek_shows_state_result_traceback_and_changes_nothing(tasks: Any, app: Any,
                                                              vhost: str) -> None:
    ok, bad, message = finished(tasks)
    names = app.backend.names
    unknown = str(uuid.uuid4())
    with broker.RawBroker(vhost) as raw:
        before = [raw.message_count(names.task_queue(tid)) for tid in (ok, bad)]
        out = cli(app, "peek", ok, bad, unknown)
        after = [raw.message_count(names.task_queue(tid)) for tid in (ok, bad)]
    assert out.exit_code == 0, out.output
    text = out.output
    ok_block, bad_block, unknown_block = text.split("\n\n")
    assert ok_block.splitlines()[0] == ok
    assert re.search(r"state\s+SUCCESS", ok_block) and re.search(r"result\s+4$", ok_block, re.M)
    assert re.search(r"name\s+tests\.tasks_app\.add", ok_block)  # result_extended fields
    assert re.search(r"args\s+\[2, 2\]", ok_block) and re.search(r"worker\s+car-test-", ok_block)
    assert re.search(r"date_done\s+\d{4}-\d\d-\d\dT", ok_block)
    assert re.search(r"state\s+FAILURE", bad_block)
    assert f"ValueError: {message}" in bad_block
    assert "traceback:" in bad_block and "raise ValueError(message)" in bad_block
    assert "PENDING" in unknown_block and "nothing stored" in unknown_block
    # Nothing changed: each queue still holds its one state, readable by a fresh client.
    assert before == after == [1, 1]
    fresh = make_app(app.conf.result_backend)
    try:
        assert fresh.AsyncResult(ok).get(timeout=5) == 4
        assert fresh.AsyncResult(bad).state == states.FAILURE
    finally:
        fresh.backend.close()


def test_peek_json_parses_with_every_field(tasks: Any, app: Any) -> None:
    ok, bad, message = finished(tasks)
    saved = app.GroupResult(str(uuid.uuid4()), [app.AsyncResult(ok), app.AsyncResult(bad)])
    saved.save()
    unknown = str(uuid.uuid4())
    out = cli(app, "peek", "--json", ok, bad, unknown, saved.id)
    assert out.exit_code == 0, out.output
    records = {rec["id"]: rec for rec in json.loads(out.output)}
    assert records[ok]["state"] == "SUCCESS" and records[ok]["result"] == 4
    assert records[ok]["name"] == "tests.tasks_app.add" and records[ok]["args"] == [2, 2]
    assert records[ok]["kwargs"] == {} and records[ok]["retries"] == 0
    assert records[ok]["queue"] == "celery" and records[ok]["traceback"] is None
    assert datetime.fromisoformat(records[ok]["date_done"]).tzinfo is not None
    assert records[bad]["state"] == "FAILURE"
    assert records[bad]["result"] == {"type": "ValueError", "module": "builtins",
                                      "message": message}
    assert "ValueError" in records[bad]["traceback"]
    assert records[unknown]["state"] == "PENDING" and records[unknown]["stored"] is False
    assert records[saved.id]["kind"] == "group" and records[saved.id]["result"] == [ok, bad]


def test_peek_of_a_saved_group_shows_how_its_members_stand(tasks: Any, app: Any) -> None:
    ok, bad, _ = finished(tasks)
    still_running = str(uuid.uuid4())  # a member with no state yet, as a running task
    members = [app.AsyncResult(task_id) for task_id in (ok, bad, still_running)]
    saved = app.GroupResult(str(uuid.uuid4()), members)
    saved.save()
    out = cli(app, "peek", "--json", saved.id)
    assert out.exit_code == 0, out.output
    (rec,) = json.loads(out.output)
    # The group record itself is stored SUCCESS; the group is not done.
    assert rec["kind"] == "group" and rec["state"] == "PENDING" and rec["stored"] is True
    assert rec["members"] == {"total": 3, "finished": 2, "succeeded": 1, "failed": 1,
                              "pending": 1}
    assert rec["result"] == [ok, bad, still_running]
    text = cli(app, "peek", saved.id).output
    assert re.search(r"^  members +3: 2 finished \(1 succeeded, 1 failed\), 1 pending$",
                     text, re.M), text
    assert "SUCCESS" not in text

    app.backend.mark_as_done(still_running, 5)
    (rec,) = json.loads(cli(app, "peek", "--json", saved.id).output)
    assert rec["state"] == "FAILURE" and rec["members"]["pending"] == 0
    done = app.GroupResult(str(uuid.uuid4()), [app.AsyncResult(ok),
                                                app.AsyncResult(still_running)])
    done.save()
    (rec,) = json.loads(cli(app, "peek", "--json", done.id).output)
    assert rec["state"] == "SUCCESS" and rec["members"]["succeeded"] == 2


def test_commands_are_registered_with_celery(tasks: Any, url: str) -> None:
    ok, _, _ = finished(tasks)
    done = celery_cli(url, "peek", "--json", ok)
    assert done.returncode == 0, done.stderr
    (rec,) = json.loads(done.stdout)
    assert (rec["id"], rec["state"], rec["result"]) == (ok, "SUCCESS", 4)


# -- watch -----------------------------------------------------------------------------------

def test_watch_waits_for_a_group_and_tasks_and_exits_0(tasks: Any, app: Any) -> None:
    # Sent just before watching: most members finish while it waits.
    members = saved_group(tasks, *[tasks.progress.s(3, 0.01) for _ in range(12)])
    single = tasks.add.delay(1, 1)
    out = cli(app, "watch", "--allow-pending", members.id, single.id)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("[") and "/13 finished:" in lines[0]  # plain progress lines
    assert any(line.startswith("13 tasks watched for ") and
               "13 succeeded, 0 failed, 0 pending" in line for line in lines), out.output
    assert "failed (" not in out.output
    assert members.get(timeout=WAIT) == [3] * 12  # the watch took nothing away


def test_watch_exits_nonzero_when_a_member_failed(tasks: Any, url: str) -> None:
    failing = [tasks.fail.s(f"member-{n}") for n in range(2)]
    members = saved_group(tasks, *[tasks.add.s(n, n) for n in range(10)], *failing)
    done = celery_cli(url, "watch", members.id)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "12 tasks watched for " in done.stdout
    assert "10 succeeded, 2 failed, 0 pending" in done.stdout
    failed = [line.split() for line in done.stdout.splitlines() if line.startswith("  ")]
    assert sorted(parts[0] for parts in failed) == sorted(r.id for r in members.results[10:])
    assert {" ".join(parts[1:]) for parts in failed} == {"ValueError: member-0",
                                                          "ValueError: member-1"}


def test_watch_refuses_an_unknown_id_and_times_out_on_a_pending_one(app: Any) -> None:
    unknown = str(uuid.uuid4())
    out = cli(app, "watch", unknown)
    assert out.exit_code == 2
    assert f"{unknown}: no saved group and no stored state" in out.output
    out = cli(app, "watch", "--allow-pending", "--timeout", "0.2", unknown)
    assert out.exit_code == 3, out.output
    assert "1 task watched" in out.output and "0 succeeded, 0 failed, 1 pending" in out.output
    assert f"unfinished (1):\n  {unknown}" in out.output


def test_watch_draws_a_rich_bar_on_a_terminal(tasks: Any, url: str) -> None:
    members = saved_group(tasks, *[tasks.add.s(n, 1) for n in range(5)])
    members.get(timeout=WAIT)
    code, screen = run_in_terminal(url, "watch", members.id)
    assert code == 0, screen
    assert "━" in screen and "5/5" in screen  # rich's bar and its M/N column
    assert "5 succeeded, 0 failed, 0 pending" in screen


def test_watch_without_rich_prints_plain_lines_on_a_terminal(tasks: Any, url: str,
                                                              tmp_path: Any) -> None:
    blocked = tmp_path / "rich"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('rich is not installed here')\n")
    members = saved_group(tasks, *[tasks.add.s(n, 1) for n in range(3)])
    members.get(timeout=WAIT)
    code, screen = run_in_terminal(url, "watch", members.id, first_path=str(tmp_path))
    assert code == 0, screen
    assert "━" not in screen and "3/3 finished: 3 succeeded" in screen, screen
    assert "Traceback" not in screen


def test_the_backend_and_the_cli_do_not_import_rich() -> None:
    code = ("import sys, celery_amqp_results, celery_amqp_results.cli, "
            "celery_amqp_results.cli.watch; print('rich' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stdout + done.stderr


def run_in_terminal(url: str, *args: str, first_path: str = "") -> Tuple[int, str]:
    """Run the command with a pseudo-terminal as stdout; its exit code and what it drew.

    ``first_path`` goes first on PYTHONPATH (to hide an installed package).
    """
    path = os.pathsep.join(part for part in (first_path, str(ROOT)) if part)
    env = dict(os.environ, CAR_TEST_URL=url, PYTHONPATH=path, TERM="xterm-256color",
               COLUMNS="120")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.tasks_app", "amqp-results", *args],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks: List[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], WAIT)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    return proc.wait(timeout=WAIT), b"".join(chunks).decode("utf-8", "replace")


# -- forget ----------------------------------------------------------------------------------

def test_forget_removes_results_and_group_records(tasks: Any, app: Any, vhost: str) -> None:
    ok, bad, _ = finished(tasks)
    saved = app.GroupResult(str(uuid.uuid4()), [app.AsyncResult(ok)])
    saved.save()
    unknown = str(uuid.uuid4())
    names = app.backend.names
    out = cli(app, "forget", ok, unknown)
    assert out.exit_code == 0, out.output
    assert f"{ok}: forgotten" in out.output and f"{unknown}: no result stored" in out.output
    assert "forgot 1 result of 2 ids" in out.output
    out = cli(app, "forget", "--group", saved.id)
    assert out.exit_code == 0 and f"{saved.id}: forgotten" in out.output, out.output
    with broker.RawBroker(vhost) as raw:
        assert not raw.exists(names.task_queue(ok))
        assert not raw.exists(names.group_queue(saved.id))
        assert raw.exists(names.task_queue(bad))  # only what was named
    assert app.backend.get_task_meta(ok, cache=False)["status"] == states.PENDING


# -- purge -----------------------------------------------------------------------------------

@pytest.fixture
def old_app(url: str) -> Iterator[Any]:
    """An app whose clock runs three hours late, so what it stores looks three hours old."""
    app = make_app(url)
    app.now = lambda: datetime.now(timezone.utc) - timedelta(hours=3)  # type: ignore
    yield app
    app.backend.close()


def test_purge_deletes_only_results_older_than_the_age(tasks: Any, app: Any, old_app: Any,
                                                       vhost: str) -> None:
    young_ok, young_bad, _ = finished(tasks)  # the worker's: finished just now
    backend, names = old_app.backend, old_app.backend.names
    old_ok, old_bad, old_started = (str(uuid.uuid4()) for _ in range(3))
    backend.mark_as_done(old_ok, 1)
    backend.mark_as_failure(old_bad, ValueError("old"))
    backend.mark_as_started(old_started)  # unfinished: no date_done, never purged
    old_group = old_app.GroupResult(str(uuid.uuid4()), [old_app.AsyncResult(old_ok)])
    old_group.save()
    # Not result queues, though under the prefix or holding an old state: never touched.
    chord_log = names.prefix + f"chord.{uuid.uuid4()}"
    elsewhere = f"not-ours.task.{uuid.uuid4()}"
    with broker.RawBroker(vhost) as raw:
        body = raw.peek(names.task_queue(old_ok)).body
        for name in (chord_log, elsewhere):
            raw.channel.queue_declare(name, durable=True, auto_delete=False)
            raw.channel.basic_publish(amqp_message(body), exchange="", routing_key=name)

        dry = cli(app, "purge", "--older-than", "2h", "--dry-run", "-v")
        assert dry.exit_code == 0, dry.output
        assert f"would delete task {old_ok} " in dry.output
        assert f"would delete group {old_group.id} " in dry.output
        assert re.search(r"would delete 3 finished more than 2h ago", dry.output), dry.output
        assert raw.exists(names.task_queue(old_ok))  # a dry run deletes nothing

        out = cli(app, "purge", "--older-than", "2h", "-v")
        assert out.exit_code == 0, out.output
        deleted = set(re.findall(r"^deleted (?:task|group) (\S+) ", out.output, re.M))
        assert deleted == {old_ok, old_bad, old_group.id}, out.output
        assert re.search(r"deleted 3 finished more than 2h ago; kept \d+: \d+ finished "
                         r"within 2h, \d+ unfinished", out.output), out.output
        for gone in (names.task_queue(old_ok), names.task_queue(old_bad),
                     names.group_queue(old_group.id)):
            assert not raw.exists(gone), gone
        for kept in (names.task_queue(young_ok), names.task_queue(young_bad),
                     names.task_queue(old_started), chord_log, elsewhere):
            assert raw.exists(kept), kept
            assert raw.message_count(kept) == 1, kept
        for name in (chord_log, elsewhere):
            raw.channel.queue_delete(name)


def amqp_message(body: bytes) -> Any:
    import amqp

    return amqp.Message(body, content_type="application/json", content_encoding="utf-8")


def test_purge_refuses_a_duration_without_unit(app: Any) -> None:
    out = cli(app, "purge", "--older-than", "90")
    assert out.exit_code == 2
    assert "'90' is not a duration" in out.output and "30m" in out.output


# -- doctor ----------------------------------------------------------------------------------

@pytest.fixture
def own_vhost() -> Iterator[str]:
    """A vhost of this test alone, so the queue counts are exactly what it made."""
    name = broker.new_vhost()
    yield name
    broker.delete_vhost(name)


def test_doctor_counts_queues_and_flags_mismatched_arguments(own_vhost: str) -> None:
    app = make_app(broker.url_for(own_vhost))
    try:
        names = app.backend.names
        ids = [str(uuid.uuid4()) for _ in range(3)]
        for task_id in ids:
            app.backend.mark_as_done(task_id, task_id)
        app.GroupResult(str(uuid.uuid4()), [app.AsyncResult(ids[0])]).save()
        # A result queue declared by "another process" whose result_expires is 60 s.
        handmade = names.task_queue(str(uuid.uuid4()))
        with broker.RawBroker(own_vhost) as raw:
            raw.channel.queue_declare(handmade, durable=True, auto_delete=False, arguments={
                "x-max-length": 1, "x-overflow": "drop-head", "x-expires": 60_000})
            raw.channel.queue_declare(names.prefix + "chord.x", durable=True,
                                      auto_delete=False)
            raw.channel.queue_declare("someone-else", durable=True, auto_delete=False)

        out = cli(app, "doctor", "--json")
        assert out.exit_code == 1, out.output
        report = json.loads(out.output)
        assert report["vhost"] == own_vhost and report["prefix"] == names.prefix
        assert report["counts"]["task_results"] == 4
        assert report["counts"]["groups"] == 1 and report["counts"]["other"] == 1
        findings = {finding["topic"]: finding for finding in report["findings"]}
        arguments = findings["arguments"]
        assert arguments["level"] == "problem"
        assert "1 of 5 classic result queues" in arguments["summary"]
        assert "x-expires=60000 (here: 86400000)" in arguments["summary"]
        assert handmade in arguments["summary"]
        assert "result_expires" in arguments["advice"]
        assert findings["broker"]["level"] == "ok" and \
            f"RabbitMQ {broker.broker_version()} " in findings["broker"]["summary"]
        assert findings["connection"]["level"] == "ok"
        assert findings["queue types"]["level"] == "ok"
        assert findings["transient queues"]["level"] == "ok"
        assert "5 result queues" in findings["capacity"]["summary"]

        text = cli(app, "doctor")
        assert text.exit_code == 1
        assert re.search(r"^problem\s+arguments\s+1 of 5 classic result queues", text.output, re.M)
        assert "advice: Every worker and client on this vhost must agree on result_expires" \
            in " ".join(text.output.split())
    finally:
        app.backend.close()


def management_user_sees(user: str, password: str, path: str) -> bool:
    """Whether ``user`` may GET ``path`` of the suite's broker's management API."""
    request = urllib.request.Request(f"http://{broker.HOST}:{broker.MANAGEMENT_PORT}/{path}")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return False
        raise


def test_doctor_with_a_management_only_user_says_what_it_could_not_check(
        own_vhost: str) -> None:
    user, password = f"car-cli-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    broker.rabbitmqctl("add_user", user, password)
    try:
        broker.rabbitmqctl("set_user_tags", user, "management")
        broker.rabbitmqctl("set_permissions", "-p", own_vhost, user, ".*", ".*", ".*")
        app = make_app(broker.url_for(own_vhost, user, password))
        try:
            app.backend.mark_as_done(str(uuid.uuid4()), 1)
            out = cli(app, "doctor", "--json")
            # What a 'management' user may read differs between RabbitMQ versions (4.0
            # shows it the feature flags, 3.10 does not); the doctor says what it could
            # not check, so ask the API directly what this broker lets it see.
            sees_nodes = management_user_sees(user, password, "api/nodes")
            sees_flags = management_user_sees(user, password, "api/feature-flags")
        finally:
            app.backend.close()
    finally:
        broker.rabbitmqctl("delete_user", user)
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["counts"]["task_results"] == 1
    findings = {finding["topic"]: finding for finding in report["findings"]}
    assert findings["identity"]["level"] == "ok"
    if sees_nodes:
        assert " 1 node: " in findings["broker"]["summary"]
        assert "the same broker as the AMQP one" in findings["identity"]["summary"]
    else:
        assert "without the 'monitoring' tag" in findings["broker"]["summary"]
        assert "only the name was compared" in findings["identity"]["summary"]
    types = findings["queue types"]["summary"]
    if sees_flags:  # 4.0 shows 'management' users the feature flags, not the vhost's type
        assert "(vhost default queue type: not readable by this user)" in types
    else:
        assert "without the 'administrator' tag" in types
    assert findings["arguments"]["level"] == "ok"
    assert password not in out.output


def test_doctor_counts_the_worker_results(tasks: Any, app: Any) -> None:
    before = json.loads(cli(app, "doctor", "--json").output)["counts"]["task_results"]
    finished(tasks)  # two more results, stored by the worker
    report = json.loads(cli(app, "doctor", "--json").output)
    assert report["counts"]["task_results"] >= before + 2
    findings = {finding["topic"]: finding for finding in report["findings"]}
    assert findings["connection"]["level"] == "ok"


def test_unreachable_management_api_is_one_clear_line(url: str) -> None:
    app = make_app(url, amqp_results_management_url="http://watcher:s3cret@127.0.0.1:1/")
    try:
        for command in (["doctor"], ["purge", "--older-than", "1d"]):
            out = cli(app, *command)
            assert out.exit_code == 69, out.output
            lines = out.output.strip().splitlines()
            assert len(lines) == 1, out.output
            assert lines[0].startswith(
                "Error: cannot reach RabbitMQ's management API at http://127.0.0.1:1/ "
                "(user 'watcher')"), lines
            assert "s3cret" not in out.output and "Traceback" not in out.output
    finally:
        app.backend.close()


def test_unreachable_broker_is_one_clear_line() -> None:
    app = make_app("amqp://guest:s3cret@127.0.0.1:1/nowhere")  # nothing listens on port 1
    try:
        for command in (["peek", "x"], ["watch", "x"], ["forget", "x"]):
            out = cli(app, *command)
            assert out.exit_code == 69, out.output
            assert out.output.strip().splitlines() == [
                "Error: cannot use the result broker at 127.0.0.1:1 vhost 'nowhere' as user "
                "'guest': [Errno 111] Connection refused"], out.output
    finally:
        app.backend.close()


def test_doctor_first_reaches_the_configured_broker(url: str) -> None:
    port = free_port()  # nothing listens there; the shared node's API is on 15672
    app = make_app(f"amqp://guest:guest@127.0.0.1:{port}//")
    try:
        out = cli(app, "doctor")
    finally:
        app.backend.close()
    assert out.exit_code == 69, out.output
    assert out.output.strip().splitlines() == [
        f"Error: cannot use the result broker at 127.0.0.1:{port} vhost '/' as user "
        f"'guest': [Errno 111] Connection refused"], out.output


def test_doctor_sees_that_the_management_api_is_another_brokers() -> None:
    with PrivateNode() as node:  # no management plugin: 15672 is the shared node's API
        app = make_app(f"amqp://guest:guest@127.0.0.1:{node.port}//")
        try:
            out = cli(app, "doctor", "--json")
            text = cli(app, "doctor")
        finally:
            app.backend.close()
    assert out.exit_code == 1, out.output
    report = json.loads(out.output)
    findings = {finding["topic"]: finding for finding in report["findings"]}
    assert set(findings) == {"identity", "connection"}, findings  # the rest is skipped
    identity = findings["identity"]
    assert identity["level"] == "problem"
    # A node's cluster name is its node name with the machine's host name.
    name = node.nodename.split("@")[0]
    assert f"the AMQP broker at 127.0.0.1:{node.port} is cluster '{name}@" in \
        identity["summary"]
    assert f"AMQP listeners: {broker.PORT}" in identity["summary"]
    assert "amqp_results_management_url" in identity["advice"]
    assert findings["connection"]["level"] == "ok" and report["counts"] is None
    assert text.exit_code == 1 and "ok       broker" not in text.output


def test_doctor_in_quorum_mode_checks_quorum_queues() -> None:
    """Quorum result queues, as configured, are 0 problems; a classic one, or a quorum one
    declared with another x-expires, is reported by name (issue 16: every queue was
    reported, the type argument dropped from what the broker said and still expected)."""
    import amqp

    with PrivateNode(management=True) as node:
        app = make_app(node.url, amqp_results_queue_type="quorum",
                       amqp_results_management_url=node.management_url)
        try:
            names = app.backend.names
            ids = [str(uuid.uuid4()) for _ in range(3)]
            for task_id in ids:
                app.backend.mark_as_done(task_id, task_id)
            app.GroupResult(str(uuid.uuid4()), [app.AsyncResult(ids[0])]).save()
            report = json.loads(cli(app, "doctor", "--json").output)
            findings = {finding["topic"]: finding for finding in report["findings"]}
            assert [f for f in findings.values() if f["level"] in ("problem", "warning")] \
                == [], findings
            assert "all 4 result queues are quorum queues" in findings["queue types"]["summary"]
            assert "all 4 quorum result queues have the arguments" in \
                findings["arguments"]["summary"]
            assert "the same broker" in findings["identity"]["summary"], findings

            # "Another process" with other settings: a classic queue, a quorum queue
            # whose result_expires is 60 s.
            classic, short = (names.task_queue(str(uuid.uuid4())) for _ in range(2))
            conn = amqp.Connection(f"127.0.0.1:{node.port}", userid="guest", password="guest")
            conn.connect()
            try:
                channel = conn.channel()
                channel.queue_declare(classic, durable=True, auto_delete=False, arguments={
                    "x-max-length": 1, "x-overflow": "drop-head", "x-expires": 86_400_000})
                channel.queue_declare(short, durable=True, auto_delete=False, arguments={
                    **app.backend.topology.queue_arguments, "x-expires": 60_000})
            finally:
                conn.close()
            out = cli(app, "doctor", "--json")
        finally:
            app.backend.close()
    assert out.exit_code == 1, out.output
    findings = {finding["topic"]: finding for finding in json.loads(out.output)["findings"]}
    types, arguments = findings["queue types"], findings["arguments"]
    assert types["level"] == "problem"
    assert f"result queues that are not quorum: 1 classic, e.g. {classic!r}" in \
        types["summary"], types
    assert arguments["level"] == "problem"
    assert "1 of 5 quorum result queues" in arguments["summary"], arguments
    assert f"x-expires=60000 (here: 86400000), e.g. {short!r}" in arguments["summary"]
    assert classic not in arguments["summary"]  # its type is the other finding's


@pytest.mark.parametrize("overview, level, says", [
    ({"cluster_name": "rabbit@a", "listeners": [{"protocol": "amqp", "port": 5672}]},
     "ok", "the same broker"),
    ({"cluster_name": "rabbit@a", "listeners": [{"protocol": "amqp", "port": 5673}]},
     "warning", "no AMQP listener on port 5672"),
    ({"cluster_name": "rabbit@b", "listeners": [{"protocol": "amqp", "port": 5672}]},
     "problem", "another broker's"),
    ({"cluster_name": "rabbit@a"}, "ok", "only the name was compared"),
    ({"listeners": []}, "warning", "could not check"),
])
def test_identity_compares_cluster_name_and_listeners(overview: Dict[str, Any], level: str,
                                                      says: str) -> None:
    from celery_amqp_results.cli.identity import BrokerIdentity, check_identity
    broker_seen = BrokerIdentity("127.0.0.1", 5672, "rabbit@a", "3.10.8")
    finding = check_identity(broker_seen, overview, "http://127.0.0.1:15672/", "guest")
    assert (finding.level, says in finding.summary) == (level, True), finding


def test_a_backend_that_cannot_be_loaded_is_bad_input(url: str) -> None:
    app = make_app(url, amqp_results_peek_attempts=0)
    out = cli(app, "peek", "x")
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines() == [
        "Error: the app's result backend cannot be loaded: amqp_results_peek_attempts "
        "must be a whole number >= 1, got 0"], out.output


def test_ctrl_c_is_one_line_and_exit_130() -> None:
    import click

    from celery_amqp_results.cli.context import reports_errors

    @click.command()
    @reports_errors
    def interrupted() -> None:
        raise KeyboardInterrupt

    out = CliRunner().invoke(interrupted, [])
    assert (out.exit_code, out.output) == (130, "Error: interrupted\n")


def test_a_non_amqp_backend_is_refused() -> None:
    app = make_app("memory://", result_backend="cache+memory://")
    out = cli(app, "peek", "x")
    assert out.exit_code == 2
    assert "reads only celery-amqp-results' amqp:// backend" in out.output


# -- pure logic --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1w", 604800),
    ("1h30m", 5400), ("1.5h", 5400), (" 2H ", 7200), ("0s", 0)])
def test_durations(text: str, seconds: int) -> None:
    from celery_amqp_results.cli.duration import format_duration, parse_duration

    assert parse_duration(text).total_seconds() == seconds
    assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


@pytest.mark.parametrize("text", ["", "90", "5x", "h", "-1h", "1h-", "1 day"])
def test_bad_durations_name_the_text(text: str) -> None:
    from celery_amqp_results.cli.duration import parse_duration

    with pytest.raises(ValueError, match=re.escape(repr(text)) + " is not a duration"):
        parse_duration(text)


def test_management_url_follows_the_backend_url() -> None:
    from kombu import Connection

    from celery_amqp_results.management import management_api

    api = management_api(Connection("amqp://u:p%40ss@rabbit:5673/prod"), "prod")
    assert (api.root, api.user, api.password, api.vhost) == (
        "http://rabbit:15672/", "u", "p@ss", "prod")
    assert "p@ss" not in repr(api)
    tls = management_api(Connection("amqps://u:p@rabbit/prod", ssl=True), "prod")
    assert tls.root == "https://rabbit:15671/"
    six = management_api(Connection("amqp://u:p@[::1]:5672//"), "/")
    assert six.root == "http://[::1]:15672/"
    override = management_api(Connection("amqp://u:p@rabbit//"), "/",
                              "https://admin:pw@mgmt.example:8443/rabbitmq")
    assert (override.root, override.user, override.password) == (
        "https://mgmt.example:8443/rabbitmq/", "admin", "pw")
    keeps = management_api(Connection("amqp://u:p@rabbit//"), "/", "http://mgmt:15672/")
    assert (keeps.root, keeps.user, keeps.password) == ("http://mgmt:15672/", "u", "p")


def test_management_url_setting_is_checked_without_echoing_it() -> None:
    from celery_amqp_results.settings import Settings

    with pytest.raises(ValueError, match="must be an http:// or https:// URL") as caught:
        Settings.from_conf({"amqp_results_management_url": "amqp://u:secret@h:5672/"})
    assert "secret" not in str(caught.value)


def test_tally_counts_rate_and_eta() -> None:
    from celery_amqp_results.cli.tally import Tally, progress_line

    now = [100.0]
    tally = Tally(["a", "b", "c", "d", "e"], clock=lambda: now[0])
    assert tally.add("a", {"status": "SUCCESS"})  # finished before watching began
    tally.begin()
    assert tally.rate is None and tally.eta is None
    now[0] += 2
    assert not tally.add("b", {"status": "STARTED"})  # not ready: not counted
    assert tally.add("b", {"status": "FAILURE", "result": ValueError("x")})
    assert tally.add("c", {"status": "REVOKED"})
    assert not tally.add("c", {"status": "SUCCESS"})  # counted once
    assert (tally.succeeded, tally.failed, tally.pending) == (1, 2, 2)
    assert tally.rate == 1.0 and tally.eta == 2.0  # 2 finished in 2 s, 2 to go
    assert tally.failures() == ["b", "c"] and tally.unfinished() == ["d", "e"]
    assert progress_line(tally) == ("3/5 finished: 1 succeeded, 2 failed, 2 pending; "
                                    "1.0/s, ETA 2.0s")


def test_inventory_sorts_queues_by_name() -> None:
    from celery_amqp_results.cli.inventory import classify, id_of
    from celery_amqp_results.naming import Names

    names = Names("p.")
    queues = [{"name": n} for n in (
        "p.task.1", "p.group.2", "p.waiter.3", "p.chord.4", "p.chord-size.5", "p.task.",
        "other.task.6")]
    inventory = classify(names, queues)
    assert [q["name"] for q in inventory.tasks] == ["p.task.1"]
    assert [q["name"] for q in inventory.groups] == ["p.group.2"]
    assert [q["name"] for q in inventory.waiters] == ["p.waiter.3"]
    assert [q["name"] for q in inventory.other] == ["p.chord.4", "p.chord-size.5", "p.task."]
    assert id_of(names, "p.group.2") == "2"
    with pytest.raises(ValueError, match="not a result queue"):
        id_of(names, "p.chord.4")


def test_finished_at_reads_celery_dates() -> None:
    from celery_amqp_results.cli.purge import finished_at

    utc = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert finished_at({"date_done": "2024-05-01T12:00:00+00:00"}) == utc
    assert finished_at({"date_done": "2024-05-01T14:00:00+02:00"}) == utc
    assert finished_at({"date_done": "2024-05-01T12:00:00Z"}) == utc
    assert finished_at({"date_done": "2024-05-01T12:00:00"}) == utc  # naive: UTC
    assert finished_at({"date_done": None}) is None
    assert finished_at({"date_done": "yesterday"}) is None
    assert finished_at({}) is None


def test_argument_differences_name_what_differs() -> None:
    from celery_amqp_results.cli.findings import argument_differences

    expected = {"x-max-length": 1, "x-overflow": "drop-head", "x-expires": 1000}
    same: Dict[str, Any] = {"arguments": dict(expected, **{"x-queue-type": "classic"}),
                            "durable": True, "auto_delete": False, "exclusive": False}
    assert argument_differences(same, expected) == []
    other = {"arguments": {"x-max-length": 1}, "durable": False}
    assert argument_differences(other, expected) == [
        ("x-expires", None, 1000), ("x-overflow", None, "drop-head"),
        ("durable", False, True)]
