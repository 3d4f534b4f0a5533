"""Outputs that line software (PLC / MES) listens to. Both are sinks (``output(record)``) that never
block the inspection loop: records go into a bounded queue, a worker thread sends them, and when the
queue is full the record is dropped from that output and counted (the JSONL/CSV file still has it).

- ``WebhookOutput(url, timeout_s=2, retries=2)``: HTTP POST of each NG record (and of the record where a
  drift alarm starts or ends: ``drift_event``, runtime.drift) as JSON; retried with
  back-off on connection errors / 5xx; ``sent``, ``failed``, ``dropped`` counters.
- ``MqttOutput(host, port, topic)``: every record published as JSON (QoS 1) through paho-mqtt
  (optional: ``pip install paho-mqtt``); reconnects by itself.
- ``parse_mqtt("HOST:PORT/TOPIC")`` → (host, port, topic).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from ..errors import BackendUnavailable, InputError

log = logging.getLogger("anomedge.outputs")
_STOP = object()


class _QueuedOutput:
    """A bounded queue drained by a daemon worker calling ``_send(record)``."""

    def __init__(self, maxsize: int = 1000):
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.sent = self.failed = self.dropped = 0
        self._worker = threading.Thread(target=self._drain, name=f"anomedge-{type(self).__name__}", daemon=True)
        self._worker.start()

    def wanted(self, record: dict[str, Any]) -> bool:
        return True

    def __call__(self, record: dict[str, Any]) -> None:
        if not self.wanted(record):
            return
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _drain(self) -> None:
        while True:
            record = self.queue.get()
            if record is _STOP:
                return
            try:
                ok = self._send(record)
            except Exception as exc:  # an output must never kill the run
                log.warning("%s: %s", type(self).__name__, exc)
                ok = False
            if ok:
                self.sent += 1
            else:
                self.failed += 1

    def _send(self, record: dict[str, Any]) -> bool:
        raise NotImplementedError

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued for at most ``timeout_s``, then stop."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                continue
        self._worker.join(max(0.0, deadline - time.monotonic()))


class WebhookOutput(_QueuedOutput):
    def __init__(self, url: str, timeout_s: float = 2.0, retries: int = 2, only_ng: bool = True, maxsize: int = 1000):
        if not url.lower().startswith(("http://", "https://")):
            raise InputError(f"--webhook '{url}': expected an http:// or https:// URL")
        self.url, self.timeout_s, self.retries, self.only_ng = url, timeout_s, retries, only_ng
        super().__init__(maxsize)

    def wanted(self, record: dict[str, Any]) -> bool:
        return record.get("label") == "NG" or "drift_event" in record or not self.only_ng

    def _send(self, record: dict[str, Any]) -> bool:
        body = json.dumps(record).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json", "User-Agent": "anomedge"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read(1 << 16)
                return True
            except urllib.error.HTTPError as exc:
                if exc.code < 500:  # the receiver refuses it: retrying will not help
                    log.warning("webhook %s: HTTP %d for frame %s", self.url, exc.code, record.get("index"))
                    return False
            except (urllib.error.URLError, OSError) as exc:
                log.warning("webhook %s: %s (attempt %d)", self.url, getattr(exc, "reason", exc), attempt + 1)
            time.sleep(min(0.25 * 2 ** attempt, 2.0))
        return False


def parse_mqtt(text: str) -> tuple[str, int, str]:
    """``HOST:PORT/TOPIC`` (port optional, default 1883) → (host, port, topic)."""
    hostport, sep, topic = text.partition("/")
    host, _, port = hostport.partition(":")
    try:
        number = int(port) if port else 1883
    except ValueError:
        number = -1
    if not sep or not topic or not host or not 0 < number < 65536:
        raise InputError(f"--mqtt '{text}': expected HOST:PORT/TOPIC, e.g. localhost:1883/line1/decisions")
    return host, number, topic


class MqttOutput(_QueuedOutput):
    def __init__(self, host: str, port: int, topic: str, qos: int = 1, only_ng: bool = False,
                 connect_timeout_s: float = 5.0, maxsize: int = 1000):
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise BackendUnavailable("--mqtt needs paho-mqtt, which is not installed: pip install paho-mqtt "
                                     "(or pip install 'anomedge[mqtt]')") from exc
        self.topic, self.qos, self.only_ng = topic, qos, only_ng
        self.connected = threading.Event()
        if hasattr(mqtt, "CallbackAPIVersion"):
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        else:  # paho-mqtt 1.x
            client = mqtt.Client()
        client.on_connect = lambda *args: self.connected.set()
        client.on_disconnect = lambda *args: self.connected.clear()
        client.max_queued_messages_set(maxsize)
        client.reconnect_delay_set(1, 30)
        try:
            client.connect_async(host, port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise InputError(f"--mqtt {host}:{port}: {exc}") from exc
        client.loop_start()
        self.client = client
        self._last = None
        if not self.connected.wait(connect_timeout_s):
            log.warning("mqtt %s:%d: not connected yet; records are queued and sent once it is", host, port)
        super().__init__(maxsize)

    def wanted(self, record: dict[str, Any]) -> bool:
        return record.get("label") == "NG" or "drift_event" in record or not self.only_ng

    def _send(self, record: dict[str, Any]) -> bool:
        info = self.client.publish(self.topic, json.dumps(record), qos=self.qos)
        self._last = info
        return info.rc == 0

    def close(self, timeout_s: float = 5.0) -> None:
        """Hand over what is queued, wait (bounded) until the broker has the last message, disconnect."""
        start = time.monotonic()
        super().close(timeout_s)
        if self._last is not None and self.connected.is_set():
            try:
                self._last.wait_for_publish(max(0.1, timeout_s - (time.monotonic() - start)))
            except (RuntimeError, ValueError):
                pass
        self.client.loop_stop()
        self.client.disconnect()
