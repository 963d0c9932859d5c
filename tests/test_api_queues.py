"""Queue depth and DLQ redrive (tickstream.queues, GET /stats, POST /dlq/redrive) against LocalStack's real SQS."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_fixtures import InProcessApi, reset_api_state
from tickstream import queues
from tickstream.settings import load_settings

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.localstack


class QueuePair:
    def __init__(self, sqs: Any, name: str) -> None:
        self.sqs = sqs
        self.dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.url = sqs.create_queue(QueueName=name, Attributes={
            "RedrivePolicy": f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": "5"}}'})["QueueUrl"]

    def send(self, queue_url: str, count: int, size: int = 10, prefix: str = "m") -> list[str]:
        bodies = [f"{prefix}{i:05d}".ljust(size, "x") for i in range(count)]
        for start in range(0, count, 10):
            entries = [{"Id": str(i), "MessageBody": body,
                        "MessageAttributes": {"codec": {"DataType": "String", "StringValue": "v1"}}}
                       for i, body in enumerate(bodies[start:start + 10])]
            assert not self.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed")
        return bodies

    def drain(self, queue_url: str) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                             MessageAttributeNames=["All"]).get("Messages", [])
            if not batch:
                return received
            received.extend(batch)
            self.sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])

    def depth(self, queue_url: str) -> tuple[int, int]:
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def delete(self) -> None:
        for queue_url in (self.url, self.dlq_url):
            self.sqs.delete_queue(QueueUrl=queue_url)


@pytest.fixture
def pair(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
         api_env: dict[str, str]) -> Iterator[QueuePair]:
    """A fresh queue + DLQ on the session's LocalStack, and the API's environment pointing at them."""
    try:
        localstack = request.getfixturevalue("localstack")
        sqs = request.getfixturevalue("aws")("sqs")
    except pytest.FixtureLookupError:
        pytest.skip("the LocalStack fixtures (tests/localstack_fixtures.py) are not loaded")
    queue_pair = QueuePair(sqs, f"api-test-{uuid.uuid4().hex[:8]}")
    for name, value in {"AWS_ENDPOINT_URL": localstack.endpoint_url, "AWS_REGION": "us-east-1",
                        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "TICKS_QUEUE_URL": queue_pair.url, "TICKS_DLQ_URL": queue_pair.dlq_url}.items():
        monkeypatch.setenv(name, value)
    reset_api_state()
    yield queue_pair
    queue_pair.delete()


class FlakyClient:
    """A real SQS client whose sends fail for some entries, or whose endpoint lacks message move tasks."""

    def __init__(self, client: Any, fail_every: int = 0, move_tasks: bool = True) -> None:
        self._client = client
        self._fail_every = fail_every
        self._move_tasks = move_tasks
        self.sent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        keep = [e for i, e in enumerate(Entries, start=self.sent) if not self._fail_every or i % self._fail_every]
        dropped = [e for e in Entries if e not in keep]
        self.sent += len(Entries)
        response = self._client.send_message_batch(QueueUrl=QueueUrl, Entries=keep) if keep else {}
        failed = [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in dropped]
        return {"Successful": response.get("Successful", []), "Failed": failed}

    def start_message_move_task(self, **kwargs: Any) -> dict[str, Any]:
        if not self._move_tasks:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "UnsupportedOperation", "Message": "no"}}, "StartMessageMoveTask")
        return self._client.start_message_move_task(**kwargs)


def test_stats_shows_queue_and_dlq_depth(api: InProcessApi, pair: QueuePair) -> None:
    pair.send(pair.url, 3)
    pair.send(pair.dlq_url, 12)
    depths = api.get("/stats").json()["queues"]
    assert (depths["queue"]["approximate_messages"], depths["queue"]["reason"]) == (3, None)
    assert depths["dlq"]["approximate_messages"] == 12
    assert depths["dlq"]["approximate_in_flight"] == 0


@pytest.mark.parametrize("method", ["auto", "message_move_task", "receive_send_delete"])
def test_redrive_moves_every_message_back_intact(api: InProcessApi, pair: QueuePair, method: str) -> None:
    bodies = pair.send(pair.dlq_url, 23)
    reply = api.post("/dlq/redrive", {"method": method})
    assert reply.status == 200, reply.body
    result = reply.json()
    assert (result["moved"], result["failed"], result["complete"]) == (23, 0, True)
    assert result["method"] == ("receive_send_delete" if method == "receive_send_delete" else "message_move_task")
    moved = pair.drain(pair.url)
    assert sorted(m["Body"] for m in moved) == bodies
    if method == "receive_send_delete":  # move tasks keep attributes on AWS; the loop copies them itself
        assert {m["MessageAttributes"]["codec"]["StringValue"] for m in moved} == {"v1"}
    assert pair.depth(pair.dlq_url) == (0, 0)


def test_redrive_of_an_empty_dlq_moves_nothing(api: InProcessApi, pair: QueuePair) -> None:
    for method in ("message_move_task", "receive_send_delete"):
        result = api.post("/dlq/redrive", {"method": method}).json()
        assert (result["moved"], result["complete"]) == (0, True)


def test_loop_is_bounded_by_max_messages(api: InProcessApi, pair: QueuePair) -> None:
    pair.send(pair.dlq_url, 25)
    result = api.post("/dlq/redrive", {"max_messages": 10}).json()  # auto + a bound → the loop
    assert (result["method"], result["moved"], result["complete"]) == ("receive_send_delete", 10, False)
    assert pair.depth(pair.url)[0] == 10 and pair.depth(pair.dlq_url)[0] == 15


def test_loop_deletes_only_what_was_sent(pair: QueuePair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queues, "LOOP_VISIBILITY_SECONDS", 1)
    bodies = pair.send(pair.dlq_url, 10)
    client = FlakyClient(queues.sqs_client(load_settings()), fail_every=3)  # entries 0, 3, 6, 9 fail
    result = queues.move_messages(client, pair.dlq_url, pair.url)
    assert (result.moved, result.failed, result.complete) == (6, 4, False)  # it stops instead of spinning
    assert pair.depth(pair.dlq_url) == (0, 4)  # not deleted: in flight until their visibility timeout ends
    deadline = time.monotonic() + 10
    while pair.depth(pair.dlq_url)[0] < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    left = sorted(m["Body"] for m in pair.drain(pair.dlq_url))
    arrived = sorted(m["Body"] for m in pair.drain(pair.url))
    assert len(left) == 4 and sorted(left + arrived) == bodies


def test_auto_falls_back_to_the_loop_without_move_tasks(pair: QueuePair) -> None:
    pair.send(pair.dlq_url, 7)
    client = FlakyClient(queues.sqs_client(load_settings()), move_tasks=False)
    result = queues.redrive(load_settings(), client=client)
    assert (result.method, result.moved, result.complete) == ("receive_send_delete", 7, True)
    with pytest.raises(queues.RedriveError, match="cannot run a message move task"):
        queues.redrive(load_settings(), method="message_move_task", client=client)


class BatchLimitClient(FlakyClient):
    """Refuses a SendMessageBatch over 256 KiB in all, as SQS endpoints with the classic limit do (LocalStack
    does not enforce it)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.batch_bytes: list[int] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        size = sum(len(e["MessageBody"].encode()) + 9 + 6 + 2 for e in Entries)  # body + the "codec" attribute
        self.batch_bytes.append(size)
        if size > 256 * 1024:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "AWS.SimpleQueueService.BatchRequestTooLong"}}, "SendMessageBatch")
        return super().send_message_batch(QueueUrl=QueueUrl, Entries=Entries)


def test_loop_splits_sends_under_the_batch_size_limit(pair: QueuePair) -> None:
    bodies = pair.send(pair.dlq_url, 10, size=100_000)  # 1 MB in all: one SendMessageBatch would be refused
    client = BatchLimitClient(queues.sqs_client(load_settings()))
    result = queues.move_messages(client, pair.dlq_url, pair.url)
    assert (result.moved, result.failed) == (10, 0)
    assert len(client.batch_bytes) >= 4 and max(client.batch_bytes) <= 256 * 1024
    assert sorted(m["Body"] for m in pair.drain(pair.url)) == bodies


def test_unreachable_sqs_is_a_503(api: InProcessApi, pair: QueuePair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing answers
    reset_api_state()
    reply = api.post("/dlq/redrive", {})
    assert (reply.status, reply.error_code) == (503, "queue_unavailable")
    assert api.get("/stats").json()["queues"]["dlq"]["reason"].startswith("unreachable")
