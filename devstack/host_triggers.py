"""The non-HTTP triggers of devstack.functions_host: queue listeners and timers, run on the host's event loop.

What they do, and where they deviate from the real host, is listed in devstack/functions_host.py's docstring.
Sync functions run in a thread pool sized as the Python worker sizes its own (PYTHON_THREADPOOL_THREAD_COUNT, else
min(32, CPUs + 4)); async ones run on the loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import inspect
import json
import logging
import math
import os
import random
import re
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.queue import QueueMessage as _QueueMessage  # the worker's own classes (with all metadata)
from azure.functions.timer import TimerRequest as _TimerRequest

from devstack import ncrontab

log = logging.getLogger("devstack.functions_host")

MIN_POLLING_INTERVAL = 0.1  # the real host's floor, and its wait after a poll that found messages
LEASE_SECONDS = 600  # a dequeued message stays invisible this long (the host's 10 minutes), renewed at half of it
PAST_DUE_AFTER = 1.0  # seconds late before a timer invocation says past_due
SHUTDOWN_GRACE = 30.0  # seconds running invocations get at shutdown before they are cancelled
_QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]$")
_SETTING_EXPR = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?$")


# -- host.json extensions.queues -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueOptions:
    """host.json `extensions.queues`, with the real host's defaults (Functions 2.x+, storage extension 5.x)."""

    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    batch_size: int = 16
    new_batch_threshold: int | None = None  # None: batch_size / 2 (the Consumption plan's N = 1)
    max_dequeue_count: int = 5
    message_encoding: str = "base64"

    @property
    def threshold(self) -> int:
        return self.batch_size // 2 if self.new_batch_threshold is None else self.new_batch_threshold


def parse_timespan(value: Any, name: str) -> float:
    """A .NET TimeSpan string (`[d.]hh:mm:ss[.fffffff]`) in seconds; host.json v2 takes no milliseconds numbers."""
    m = _TIMESPAN.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"host.json extensions.queues.{name}: {value!r} is not a TimeSpan like \"00:00:02\" "
                         "(milliseconds numbers were the Functions 1.x format)")
    days, hours, minutes, seconds, fraction = m.groups()
    if int(minutes) > 59 or int(seconds) > 59 or int(hours) > 23:
        raise ValueError(f"host.json extensions.queues.{name}: {value!r} is out of range")
    return (int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
            + (int(fraction.ljust(7, "0")) / 1e7 if fraction else 0.0))


def host_config(host_json: Path) -> dict[str, Any]:
    try:
        config = json.loads(host_json.read_text())
    except FileNotFoundError:
        return {}
    return config if isinstance(config, dict) else {}


def queue_options(host_json: Path) -> QueueOptions:
    raw = host_config(host_json).get("extensions", {}).get("queues", {})
    if not isinstance(raw, dict):
        raise ValueError("host.json extensions.queues must be an object")
    known = {"maxPollingInterval", "visibilityTimeout", "batchSize", "newBatchThreshold", "maxDequeueCount",
             "messageEncoding"}
    for extra in sorted(set(raw) - known):
        log.warning("host.json extensions.queues.%s is not emulated by the local host", extra)
    o = QueueOptions()
    polling = parse_timespan(raw["maxPollingInterval"], "maxPollingInterval") if "maxPollingInterval" in raw \
        else o.max_polling_interval
    visibility = parse_timespan(raw["visibilityTimeout"], "visibilityTimeout") if "visibilityTimeout" in raw \
        else o.visibility_timeout
    batch = _integer(raw, "batchSize", o.batch_size, 1, 32)
    threshold = _integer(raw, "newBatchThreshold", None, 0, None)
    dequeue = _integer(raw, "maxDequeueCount", o.max_dequeue_count, 1, None)
    encoding = str(raw.get("messageEncoding", o.message_encoding)).lower()
    if polling < MIN_POLLING_INTERVAL:
        raise ValueError("host.json extensions.queues.maxPollingInterval must be at least 00:00:00.100")
    if encoding not in ("base64", "none"):
        raise ValueError(f"host.json extensions.queues.messageEncoding: {encoding!r} is not base64 or none")
    return QueueOptions(polling, visibility, batch, threshold, dequeue, encoding)


def _integer(raw: dict[str, Any], name: str, default: int | None, low: int, high: int | None) -> Any:
    if name not in raw:
        return default
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"host.json extensions.queues.{name}: {value!r} must be an integer {bound}")
    return value


# -- bindings ---------------------------------------------------------------------------------------------------------
def resolve_setting_expressions(value: str, env: Mapping[str, str], what: str) -> str:
    """`%NAME%` in a binding property is the app setting NAME, as the host resolves it."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise ValueError(f"{what}: app setting {m.group(1)!r} (from {value!r}) is not set")
        return env[m.group(1)]

    return _SETTING_EXPR.sub(sub, value)


def queue_connection_string(connection: str | None, env: Mapping[str, str]) -> str:
    """The connection a queue trigger names: the app setting `<name>` (or `AzureWebJobs<name>`) holding a connection
    string; no name means AzureWebJobsStorage. Identity-based connections (`<name>__queueServiceUri`, …) are not
    supported here: they need a token credential, which Azurite does not take over http."""
    name = connection or "AzureWebJobsStorage"
    for key in (name, f"AzureWebJobs{name}"):
        if env.get(key):
            return env[key]
    if any(k.startswith(f"{name}__") for k in env):
        raise LookupError(f"connection {name!r} is identity-based ({name}__…); the local host supports only a "
                          f"connection string in the app setting {name!r}")
    raise LookupError(f"connection {name!r}: the app setting {name!r} (a storage connection string) is not set")


@dataclass
class QueueFunction:
    name: str
    user_function: Any
    param: str
    queue_name: str
    connection: str | None


@dataclass
class TimerFunction:
    name: str
    user_function: Any
    param: str
    schedule: ncrontab.Schedule
    run_on_startup: bool


def queue_function(name: str, user_function: Any, binding: dict[str, Any], env: Mapping[str, str]) -> QueueFunction:
    queue = resolve_setting_expressions(str(binding.get("queueName") or ""), env, name).lower()
    if not _QUEUE_NAME.match(queue):
        raise ValueError(f"{name}: {queue!r} is not a valid queue name (3-63 lowercase letters, digits, single "
                         "hyphens; no hyphen first or last)")
    return QueueFunction(name, user_function, binding["name"], queue, binding.get("connection"))


def timer_function(name: str, user_function: Any, binding: dict[str, Any], env: Mapping[str, str]) -> TimerFunction:
    text = resolve_setting_expressions(str(binding.get("schedule") or ""), env, name)
    try:
        schedule = ncrontab.parse(text)
    except ncrontab.ScheduleError as e:
        raise ValueError(f"{name}: invalid timer schedule: {e}") from None
    return TimerFunction(name, user_function, binding["name"], schedule, bool(binding.get("runOnStartup")))


def queue_message(**fields: Any) -> func.QueueMessage:
    """What the worker passes a queue function: `azure.functions.queue.QueueMessage` with the trigger metadata."""
    message: func.QueueMessage = _QueueMessage(**fields)  # type: ignore[no-untyped-call]
    return message


def _decode_body(content: str | None, encoding: str) -> bytes:
    text = content or ""
    if encoding == "none":
        return text.encode("utf-8")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the message is not valid base64 (host.json messageEncoding is base64)") from None


# -- the runtime ------------------------------------------------------------------------------------------------------
@dataclass
class Triggers:
    """Listeners and timers of one app, started and stopped with the host's lifespan; also runs functions on
    demand (the admin endpoint)."""

    queues: list[QueueFunction]
    timers: list[TimerFunction]
    options: QueueOptions
    env: Mapping[str, str]
    run_timers: bool = True
    run_queues: bool = True
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _invocations: set[asyncio.Task[Any]] = field(default_factory=set)
    _executor: ThreadPoolExecutor | None = None
    listening: dict[str, str] = field(default_factory=dict)  # function name → queue it polls, once polling

    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            threads = self.env.get("PYTHON_THREADPOOL_THREAD_COUNT")
            workers = int(threads) if threads and threads.isdigit() and int(threads) > 0 \
                else min(32, (os.cpu_count() or 1) + 4)
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="functions-worker")
        return self._executor

    async def start(self) -> None:
        self._stopping = asyncio.Event()  # bound to the loop that serves the app
        if self.run_queues:
            for q in self.queues:
                try:
                    conn = queue_connection_string(q.connection, self.env)
                except LookupError as e:
                    log.error("The listener for function '%s' was unable to start: %s", q.name, e)
                    continue
                self._tasks.append(asyncio.create_task(self._listen(q, conn), name=f"queue:{q.name}"))
        if self.run_timers:
            for t in self.timers:
                self._tasks.append(asyncio.create_task(self._timer(t), name=f"timer:{t.name}"))

    async def stop(self) -> None:
        """Listeners stop polling and timers stop firing at once; running invocations (and messages a listener
        had just received) get SHUTDOWN_GRACE seconds to finish, then are cancelled."""
        self._stopping.set()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while True:
            running = {t for t in (*self._tasks, *self._invocations) if not t.done()}
            remaining = deadline - time.monotonic()
            if not running or remaining <= 0:
                break
            await asyncio.wait(running, timeout=remaining)  # again: a listener may have started one meanwhile
        for task in running:
            log.warning("%s still running at shutdown: cancelled", task.get_name())
            task.cancel()
        await asyncio.gather(*self._tasks, *self._invocations, return_exceptions=True)
        self._tasks.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- invocation --------------------------------------------------------------------------------------------------
    async def invoke(self, name: str, user_function: Any, kwargs: dict[str, Any]) -> bool:
        """Runs one invocation; False (logged) if it raised — as the host logs `Executed … (Failed …)`."""
        invocation = uuid.uuid4()
        started = time.monotonic()
        try:
            if inspect.iscoroutinefunction(user_function):
                await user_function(**kwargs)
            else:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self.executor(), functools.partial(user_function, **kwargs))
        except Exception:
            log.exception("Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms)", name, invocation,
                          (time.monotonic() - started) * 1000)
            return False
        log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)", name, invocation,
                 (time.monotonic() - started) * 1000)
        return True

    def spawn(self, name: str, user_function: Any, kwargs: dict[str, Any]) -> None:
        """An invocation in the background (the admin endpoint answers 202 before it ends)."""
        task = asyncio.create_task(self.invoke(name, user_function, kwargs), name=f"invoke:{name}")
        self._invocations.add(task)
        task.add_done_callback(self._invocations.discard)

    async def _sleep(self, seconds: float) -> bool:
        """Waits; True if the host is stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._stopping.wait()
        return self._stopping.is_set()

    # -- timers ------------------------------------------------------------------------------------------------------
    @staticmethod
    def timer_request(past_due: bool, last: datetime | None, following: datetime | None) -> func.TimerRequest:
        now = datetime.now(UTC).isoformat()
        status = {"Last": last.isoformat() if last else None, "Next": following.isoformat() if following else None,
                  "LastUpdated": now}
        request: func.TimerRequest = _TimerRequest(past_due=past_due, schedule_status=status,
                                                   schedule={"AdjustForDST": True})
        return request

    async def _timer(self, t: TimerFunction) -> None:
        """One timer: invocations never overlap; the next occurrence is computed after the current one ends."""
        last: datetime | None = None
        if t.run_on_startup:
            now = datetime.now(UTC)
            await self.invoke(t.name, t.user_function,
                              {t.param: self.timer_request(False, None, t.schedule.next_after(now))})
        while not self._stopping.is_set():
            due = t.schedule.next_after(datetime.now(UTC))
            while (wait := (due - datetime.now(UTC)).total_seconds()) > 0:
                if await self._sleep(wait):
                    return
            late = (datetime.now(UTC) - due).total_seconds()
            request = self.timer_request(late > PAST_DUE_AFTER, last, t.schedule.next_after(due))
            await self.invoke(t.name, t.user_function, {t.param: request})
            last = due

    # -- queues ------------------------------------------------------------------------------------------------------
    async def _listen(self, q: QueueFunction, connection_string: str) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError
        from azure.storage.queue.aio import QueueServiceClient

        options = self.options
        in_flight: set[asyncio.Task[None]] = set()
        async with QueueServiceClient.from_connection_string(connection_string) as service:
            queue = service.get_queue_client(q.queue_name)
            poison = service.get_queue_client(f"{q.queue_name}-poison")
            delay, exists = MIN_POLLING_INTERVAL, False
            while not self._stopping.is_set():
                if len(in_flight) > options.threshold:  # as the host: a new batch once at or below the threshold
                    await asyncio.wait(set(in_flight), timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                    continue
                found = 0
                try:
                    if not exists:
                        await _create_if_missing(queue)
                        exists = True
                        self.listening[q.name] = q.queue_name
                    async for m in queue.receive_messages(messages_per_page=options.batch_size,
                                                          max_messages=options.batch_size,
                                                          visibility_timeout=LEASE_SECONDS):
                        found += 1
                        task = asyncio.create_task(self._process(q, queue, poison, m), name=f"{q.name}:{m.id}")
                        in_flight.add(task)
                        self._invocations.add(task)
                        task.add_done_callback(in_flight.discard)
                        task.add_done_callback(self._invocations.discard)
                except ResourceNotFoundError:
                    exists = False
                except AzureError as e:
                    log.warning("queue %s of function %s: polling failed (%s); retrying", q.queue_name, q.name,
                                type(e).__name__)
                # Random exponential back-off while empty, from 100 ms up to maxPollingInterval; 100 ms after a find.
                delay = MIN_POLLING_INTERVAL if found else min(options.max_polling_interval,
                                                               delay * 2 * random.uniform(0.8, 1.2))
                if await self._sleep(delay):
                    break
            if in_flight:  # their deletes and releases need this client: leave only once they are done
                await asyncio.wait(set(in_flight))

    async def _process(self, q: QueueFunction, queue: Any, poison: Any, m: Any) -> None:
        from azure.core.exceptions import AzureError

        options = self.options
        receipt = [m.pop_receipt]
        try:
            if m.dequeue_count > options.max_dequeue_count:  # dequeued before and never completed (a crash)
                await self._to_poison(q, queue, poison, m, receipt[0])
                return
            try:
                body = _decode_body(m.content, options.message_encoding)
            except ValueError as e:
                log.error("function %s: message %s on %s: %s; moving it to the poison queue", q.name, m.id,
                          q.queue_name, e)
                await self._to_poison(q, queue, poison, m, receipt[0])
                return
            message = queue_message(id=m.id, body=body, dequeue_count=m.dequeue_count,
                                        expiration_time=m.expires_on, insertion_time=m.inserted_on,
                                        time_next_visible=m.next_visible_on, pop_receipt=m.pop_receipt)
            renewal = asyncio.create_task(self._renew(queue, m.id, receipt))
            try:
                ok = await self.invoke(q.name, q.user_function, {q.param: message})
            finally:
                renewal.cancel()
                await asyncio.gather(renewal, return_exceptions=True)
            if ok:
                await queue.delete_message(m.id, receipt[0])
            elif m.dequeue_count >= options.max_dequeue_count:
                await self._to_poison(q, queue, poison, m, receipt[0])
            else:
                await queue.update_message(m.id, receipt[0],
                                           visibility_timeout=math.ceil(options.visibility_timeout))
        except AzureError as e:  # the lease runs out and the message comes back, as after a host crash
            log.warning("function %s: message %s on %s: %s after the invocation; it reappears when its lease "
                        "expires", q.name, m.id, q.queue_name, type(e).__name__)

    @staticmethod
    async def _renew(queue: Any, message_id: str, receipt: list[str]) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 2)
            updated = await queue.update_message(message_id, receipt[0], visibility_timeout=LEASE_SECONDS)
            receipt[0] = updated.pop_receipt

    async def _to_poison(self, q: QueueFunction, queue: Any, poison: Any, m: Any, receipt: str) -> None:
        log.warning("Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
                    self.options.max_dequeue_count, poison.queue_name)
        await _create_if_missing(poison)
        await poison.send_message(m.content)  # the text as it was, encoded as it was
        await queue.delete_message(m.id, receipt)


async def _create_if_missing(queue: Any) -> None:
    from azure.core.exceptions import ResourceExistsError

    with contextlib.suppress(ResourceExistsError):
        await queue.create_queue()
