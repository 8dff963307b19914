"""Structured logging with structlog: one call to configure, request and trace ids in context."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, unbind_contextvars
from structlog.typing import EventDict, WrappedLogger

_configured_service: str | None = None
# Bumped by each configure_logging; lazy loggers rebuild their structlog logger when it moves.
_generation = 0


def _add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Stamp the current OpenTelemetry span's ids, when a span is recording."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", f"{ctx.trace_id:032x}")
        event.setdefault("span_id", f"{ctx.span_id:016x}")
    return event


def configure_logging(
    service: str,
    level: str | int = "INFO",
    *,
    json: bool = True,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the standard library's root logger for one service.

    JSON lines by default (one object per event with `service`, `level`, `timestamp`, the
    bound context such as `request_id`, and `trace_id` when a span is active); `json=False`
    gives a readable console format for local runs. Idempotent.
    """
    global _configured_service, _generation
    out: TextIO = stream or _CurrentStderr()  # type: ignore[assignment]
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(lvl, int):
        raise ValueError(f"log level: {level!r} is not a logging level")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, _service_adder(service), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Route the standard library (uvicorn, grpc, httpx) through the same renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _service_adder(service),
                renderer,
            ],
            foreign_pre_chain=[*shared[:4], structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(lvl)
    _configured_service = service
    _generation += 1


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write, not at configure time.

    Holding the object that was `sys.stderr` during `configure_logging` breaks as soon as it is
    replaced and closed (a test runner's capture, a daemonising wrapper): every later log call
    would raise "I/O operation on closed file".
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _service_adder(service: str) -> Any:
    def add_service(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.setdefault("service", service)
        return event

    return add_service


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger; `name` is recorded as `logger`.

    The logger follows the latest `configure_logging`, so a module-level
    ``log = get_logger(__name__)``, created at import before `configure_logging` runs, still
    logs as configured (binding eagerly would freeze structlog's console defaults into it).
    """
    if name:
        initial["logger"] = name
    return _LazyLogger(initial)


class _LazyLogger:
    """Bound context now; a structlog logger built from the configuration in force, rebuilt
    after each `configure_logging`."""

    __slots__ = ("_built_at", "_context", "_logger")

    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context
        self._logger: Any = None
        self._built_at = -1

    def bind(self, **values: Any) -> _LazyLogger:
        return _LazyLogger({**self._context, **values})

    def new(self, **values: Any) -> _LazyLogger:
        return _LazyLogger(values)

    def unbind(self, *keys: str) -> _LazyLogger:
        missing = [k for k in keys if k not in self._context]
        if missing:
            raise KeyError(missing[0])
        return self.try_unbind(*keys)

    def try_unbind(self, *keys: str) -> _LazyLogger:
        return _LazyLogger({k: v for k, v in self._context.items() if k not in keys})

    def __getattr__(self, name: str) -> Any:
        # info, warning, exception, ...: the method of a logger built from today's config,
        # rebuilt only after configure_logging ran again (building one per call cost ~35x a
        # filtered debug line).
        if self._built_at != _generation:
            self._logger = structlog.get_logger().bind(**self._context)
            self._built_at = _generation
        return getattr(self._logger, name)


def bind_request_context(**values: Any) -> None:
    """Bind values (request_id, model, ...) to every log event of the current task."""
    bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def unbind_request_context(*keys: str) -> None:
    unbind_contextvars(*keys)


def clear_request_context() -> None:
    clear_contextvars()
