"""A TCP proxy on 127.0.0.1 whose connections a test can sever at will.

``TcpProxy(port)`` listens on a free port of 127.0.0.1 and forwards every connection
it accepts to ``127.0.0.1:port`` (a private RabbitMQ node's AMQP port, say).  ``cut()``
closes every connection it carries right now, both sides, abruptly (``SO_LINGER`` 0:
a TCP reset, not a polite FIN), as a network failure or a killed load balancer would;
the proxy keeps listening, so a client that reconnects gets through again.

``sever_channel_opens(n)`` arms a second fault: the next ``n`` AMQP ``channel.open``
frames a client sends are not forwarded; the proxy resets that connection instead,
so a client loses its connection again just after it reconnected.

It runs an asyncio loop in a daemon thread of its own; ``cut()`` and ``close()`` are
called from any other thread.
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any, Optional, Set, Tuple

HOST = "127.0.0.1"

#: l_onoff=1, l_linger=0: close() sends a RST and drops unsent data.
_LINGER_RESET = struct.pack("ii", 1, 0)

#: class 20 (channel), method 10 (open): the start of a channel.open method payload.
_CHANNEL_OPEN = b"\x00\x14\x00\x0a"

Pair = Tuple[asyncio.StreamWriter, asyncio.StreamWriter]


class _ChannelOpenSpotter:
    """Follows the AMQP 0-9-1 frames a client sends; spots a ``channel.open``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header_left = 8  # b"AMQP\x00\x00\x09\x01" comes before any frame

    def feed(self, data: bytes) -> bool:
        """Take the next bytes the client sent; True if they complete a channel.open."""
        self._buffer += data
        if self._header_left:
            skipped = min(self._header_left, len(self._buffer))
            del self._buffer[:skipped]
            self._header_left -= skipped
        found = False
        # A frame: type (1 byte), channel (2), payload size (4), payload, 0xCE.
        while len(self._buffer) >= 7:
            kind, channel, size = struct.unpack_from(">BHI", self._buffer)
            if len(self._buffer) < 7 + size + 1:
                break
            if kind == 1 and channel and self._buffer[7:11] == _CHANNEL_OPEN:
                found = True
            del self._buffer[:7 + size + 1]
        return found


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket at once with a TCP reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    writer.transport.abort()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>; ``cut()`` severs all."""

    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        #: Connections accepted (and forwarded) so far, and connections severed by cut().
        self.accepted = 0
        self.severed = 0
        self._pairs: Set[Pair] = set()
        self._channel_opens_to_sever = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="tcp-proxy", daemon=True)
        self._server: Optional[asyncio.AbstractServer] = None

    @property
    def url(self) -> str:
        """An AMQP URL (guest) through this proxy, vhost ``/``."""
        return self.url_for("guest", "guest")

    def url_for(self, user: str, password: str) -> str:
        """An AMQP URL through this proxy for ``user``, vhost ``/``."""
        return f"amqp://{user}:{password}@{HOST}:{self.port}//"

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = self._run(self._listen())
        return self

    async def _listen(self) -> asyncio.AbstractServer:
        server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    def close(self) -> None:
        """Stop listening, sever every connection, stop the loop's thread."""
        if not self._thread.is_alive():
            return
        try:
            self._run(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._cut()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- severing ----------------------------------------------------------------------------

    def cut(self) -> int:
        """Reset both sides of every current connection; return how many were cut."""
        return int(self._run(self._cut()))

    async def _cut(self) -> int:
        pairs, self._pairs = self._pairs, set()
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)
        self.severed += len(pairs)
        return len(pairs)

    def sever_channel_opens(self, count: int = 1) -> None:
        """Reset the connection of each of the next ``count`` channel.open frames."""
        self._loop.call_soon_threadsafe(setattr, self, "_channel_opens_to_sever", count)

    @property
    def channel_opens_to_sever(self) -> int:
        """How many of the armed channel.open severings are still to come."""
        return self._channel_opens_to_sever

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    # -- forwarding --------------------------------------------------------------------------

    async def _handle(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_writer)  # target down: refuse as a dead broker would
            return
        self.accepted += 1
        pair = (client_writer, upstream_writer)
        self._pairs.add(pair)
        pumps = [asyncio.ensure_future(self._pump(client_reader, upstream_writer,
                                                  _ChannelOpenSpotter())),
                 asyncio.ensure_future(self._pump(upstream_reader, client_writer))]
        severed = False
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            severed = any(task.result() for task in done)
        finally:
            # One side ended: take the other down with it; abruptly if it was severed
            # here, else politely (what was forwarded last still arrives).
            self._pairs.discard(pair)
            for writer in pair:
                if severed:
                    _reset(writer)
                else:
                    writer.close()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    spotter: Optional[_ChannelOpenSpotter] = None) -> bool:
        """Copy ``reader`` to ``writer`` until either side ends; True if it severed."""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return False
                if spotter is not None and spotter.feed(data) and \
                        self._channel_opens_to_sever > 0:
                    self._channel_opens_to_sever -= 1
                    self.severed += 1
                    return True  # not forwarded: _handle resets both sides
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return False
