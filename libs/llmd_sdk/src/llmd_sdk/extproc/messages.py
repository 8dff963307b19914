"""Building and reading Envoy ext_proc v3 messages.

Pure helpers over the generated protobuf classes: header maps to dicts and back, header
mutations, dynamic metadata, body mutations, immediate responses with an OpenAI error body.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from llmd_sdk.contracts import envoy_base, ext_proc, http_status
from llmd_sdk.openai.errors import error_json

Headers = dict[str, str]

_OVERWRITE = envoy_base.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def headers_to_dict(header_map: envoy_base.HeaderMap) -> Headers:
    """Envoy's HeaderMap as a dict with lower-case keys.

    Envoy fills `raw_value` (bytes); older senders use `value`. Repeated headers are joined with
    ", " as HTTP allows for list-valued fields.
    """
    out: Headers = {}
    for hv in header_map.headers:
        value = hv.raw_value.decode("utf-8", "replace") if hv.raw_value else hv.value
        key = hv.key.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def dict_to_header_map(headers: Mapping[str, str]) -> envoy_base.HeaderMap:
    return envoy_base.HeaderMap(
        headers=[
            envoy_base.HeaderValue(key=k.lower(), raw_value=v.encode()) for k, v in headers.items()
        ]
    )


def header_mutation(
    set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()
) -> ext_proc.HeaderMutation:
    """Overwrite-or-add each of `set_headers`; remove each of `remove`."""
    return ext_proc.HeaderMutation(
        set_headers=[
            envoy_base.HeaderValueOption(
                header=envoy_base.HeaderValue(key=k.lower(), raw_value=v.encode()),
                append_action=_OVERWRITE,
            )
            for k, v in (set_headers or {}).items()
        ],
        remove_headers=list(remove),
    )


def apply_header_mutation(headers: Headers, mutation: ext_proc.HeaderMutation) -> None:
    """Apply `mutation` to `headers` in place, as Envoy does (removals after sets)."""
    for opt in mutation.set_headers:
        key = opt.header.key.lower()
        value = (
            opt.header.raw_value.decode("utf-8", "replace")
            if opt.header.raw_value
            else opt.header.value
        )
        action = opt.append_action
        if action == envoy_base.HeaderValueOption.ADD_IF_ABSENT:
            headers.setdefault(key, value)
        elif action == envoy_base.HeaderValueOption.OVERWRITE_IF_EXISTS:
            if key in headers:
                headers[key] = value
        elif action == envoy_base.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD and not (
            opt.HasField("append") and not opt.append.value
        ):
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        else:
            headers[key] = value
    for key in mutation.remove_headers:
        headers.pop(key.lower(), None)


def to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


def dynamic_metadata(namespaces: Mapping[str, Mapping[str, Any]]) -> struct_pb2.Struct:
    """`ProcessingResponse.dynamic_metadata`: top-level keys are filter-metadata namespaces."""
    return to_struct({ns: dict(values) for ns, values in namespaces.items()})


def metadata_value(metadata: envoy_base.Metadata, namespace: str, key: str) -> Any:
    """A value from `ProcessingRequest.metadata_context`, or None."""
    if namespace not in metadata.filter_metadata:
        return None
    fields = metadata.filter_metadata[namespace].fields
    if key not in fields:
        return None
    return json_format.MessageToDict(fields[key])


def metadata_context(namespaces: Mapping[str, Mapping[str, Any]]) -> envoy_base.Metadata:
    md = envoy_base.Metadata()
    for ns, values in namespaces.items():
        md.filter_metadata[ns].CopyFrom(to_struct(values))
    return md


def common_response(
    *,
    set_headers: Mapping[str, str] | None = None,
    remove_headers: Iterable[str] = (),
    body: bytes | None = None,
    clear_route_cache: bool = False,
) -> ext_proc.CommonResponse:
    resp = ext_proc.CommonResponse(clear_route_cache=clear_route_cache)
    if set_headers or remove_headers:
        resp.header_mutation.CopyFrom(header_mutation(set_headers, remove_headers))
    if body is not None:
        resp.body_mutation.body = body
    return resp


def openai_error_json(
    status: int, message: str, type_: str | None = None, code: Any = None
) -> bytes:
    """OpenAI's error body, as `llmd_sdk.openai.error_json` builds it."""
    return error_json(status, message, type_, code)


def immediate_response(
    status: int,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    details: str = "",
) -> ext_proc.ProcessingResponse:
    """An ImmediateResponse: Envoy answers the client itself and stops processing."""
    hdrs = {"content-type": "application/json", **(headers or {})} if body else dict(headers or {})
    return ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status.HttpStatus(code=status),  # type: ignore[arg-type,unused-ignore]
            headers=header_mutation(hdrs),
            body=body,
            details=details,
        )
    )


def error_response(
    status: int, message: str, type_: str | None = None, code: Any = None, details: str = ""
) -> ext_proc.ProcessingResponse:
    """ImmediateResponse with an OpenAI error JSON body."""
    return immediate_response(
        status, openai_error_json(status, message, type_, code), details=details or message
    )
