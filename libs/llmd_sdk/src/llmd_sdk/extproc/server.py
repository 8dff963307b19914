"""The gRPC side: an ExternalProcessor servicer running one `ExtProcStream` per stream, and a
small server wrapper with graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from llmd_sdk.contracts import ext_proc, ext_proc_grpc
from llmd_sdk.extproc.stream import ExtProcStream, StreamContext

StreamFactory = Callable[[StreamContext], ExtProcStream]
Registrar = Callable[[grpc.aio.Server], None]

# gRPC defaults cap messages at 4 MiB; bodies are bounded by the stream's own limit instead.
_MAX_MESSAGE = 64 * 1024 * 1024


class ExtProcServicer(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Envoy's `ExternalProcessor.Process`, delegating each stream to a fresh `ExtProcStream`."""

    def __init__(self, factory: StreamFactory) -> None:
        self._factory = factory
        self.active_streams = 0

    async def Process(
        self,
        request_iterator: AsyncIterator[ext_proc.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ext_proc.ProcessingResponse]:
        stream = self._factory(StreamContext(grpc_context=context))
        self.active_streams += 1
        try:
            async for resp in stream.run(request_iterator):
                yield resp
        finally:
            self.active_streams -= 1


class GrpcServer:
    """A grpc.aio server bound to one address, with graceful stop.

    `reuse_port` lets several processes share the port (SO_REUSEPORT) for the `--workers N` mode.
    """

    def __init__(
        self,
        address: str,
        registrars: Sequence[Registrar],
        *,
        reuse_port: bool = False,
        max_concurrent_streams: int | None = None,
    ) -> None:
        options: list[tuple[str, int]] = [
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
        if max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
        self.server = grpc.aio.server(options=options)
        for register in registrars:
            register(self.server)
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises RuntimeError("Failed to bind ...") for a taken port
            self.port = 0
        if self.port == 0:
            # Nothing was bound, so there is nothing to stop; drop the server object now, while
            # the event loop still runs its cleanup, instead of at interpreter exit.
            del self.server
            raise OSError(f"cannot bind gRPC address {address} (in use, or not a local address)")
        self.address = address

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float) -> None:
        """Refuse new streams at once; let open ones finish for up to `grace` seconds."""
        await self.server.stop(grace)

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def ext_proc_registrar(factory: StreamFactory) -> tuple[ExtProcServicer, Registrar]:
    servicer = ExtProcServicer(factory)

    def register(server: grpc.aio.Server) -> None:
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(servicer, server)

    return servicer, register


async def wait_for_signal(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """Block until one of `signals` arrives; returns its number."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()

    def deliver(sig: int) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, deliver, sig)
    try:
        return await received
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
