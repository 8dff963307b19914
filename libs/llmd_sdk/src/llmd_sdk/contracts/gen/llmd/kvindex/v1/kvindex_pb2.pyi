from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "token_ids", "prompt", "chat", "candidate_endpoints", "lora_name", "cache_salt")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    LORA_NAME_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    model: str
    token_ids: TokenIds
    prompt: str
    chat: ChatMessages
    candidate_endpoints: _containers.RepeatedScalarFieldContainer[str]
    lora_name: str
    cache_salt: str
    def __init__(self, model: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., prompt: _Optional[str] = ..., chat: _Optional[_Union[ChatMessages, _Mapping]] = ..., candidate_endpoints: _Optional[_Iterable[str]] = ..., lora_name: _Optional[str] = ..., cache_salt: _Optional[str] = ...) -> None: ...

class EndpointScore(_message.Message):
    __slots__ = ("endpoint", "matched_blocks", "score", "blocks_by_medium", "data_parallel_rank")
    class BlocksByMediumEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MATCHED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_BY_MEDIUM_FIELD_NUMBER: _ClassVar[int]
    DATA_PARALLEL_RANK_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    matched_blocks: int
    score: float
    blocks_by_medium: _containers.ScalarMap[str, int]
    data_parallel_rank: int
    def __init__(self, endpoint: _Optional[str] = ..., matched_blocks: _Optional[int] = ..., score: _Optional[float] = ..., blocks_by_medium: _Optional[_Mapping[str, int]] = ..., data_parallel_rank: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "total_blocks", "prompt_tokens", "block_size")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[EndpointScore]
    total_blocks: int
    prompt_tokens: int
    block_size: int
    def __init__(self, scores: _Optional[_Iterable[_Union[EndpointScore, _Mapping]]] = ..., total_blocks: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., block_size: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class EngineStats(_message.Message):
    __slots__ = ("endpoint", "model", "blocks", "last_sequence", "events", "resyncs")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RESYNCS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    model: str
    blocks: int
    last_sequence: int
    events: int
    resyncs: int
    def __init__(self, endpoint: _Optional[str] = ..., model: _Optional[str] = ..., blocks: _Optional[int] = ..., last_sequence: _Optional[int] = ..., events: _Optional[int] = ..., resyncs: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("keys", "entries", "events_total", "malformed_total", "engines")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MALFORMED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    keys: int
    entries: int
    events_total: int
    malformed_total: int
    engines: _containers.RepeatedCompositeFieldContainer[EngineStats]
    def __init__(self, keys: _Optional[int] = ..., entries: _Optional[int] = ..., events_total: _Optional[int] = ..., malformed_total: _Optional[int] = ..., engines: _Optional[_Iterable[_Union[EngineStats, _Mapping]]] = ...) -> None: ...
