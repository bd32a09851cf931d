from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[ErrorCode]
    CONFLICT_EXCEPTION: _ClassVar[ErrorCode]
    INVALID_REQUEST_EXCEPTION: _ClassVar[ErrorCode]
    INTERNAL_SERVER_EXCEPTION: _ClassVar[ErrorCode]
    NO_SUCH_KEY_EXCEPTION: _ClassVar[ErrorCode]
    AUTH_EXCEPTION: _ClassVar[ErrorCode]
UNKNOWN: ErrorCode
CONFLICT_EXCEPTION: ErrorCode
INVALID_REQUEST_EXCEPTION: ErrorCode
INTERNAL_SERVER_EXCEPTION: ErrorCode
NO_SUCH_KEY_EXCEPTION: ErrorCode
AUTH_EXCEPTION: ErrorCode

class KeyValue(_message.Message):
    __slots__ = ("key", "version", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    value: bytes
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class GetObjectRequest(_message.Message):
    __slots__ = ("store_id", "key")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    key: str
    def __init__(self, store_id: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class GetObjectResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: KeyValue
    def __init__(self, value: _Optional[_Union[KeyValue, _Mapping]] = ...) -> None: ...

class PutObjectRequest(_message.Message):
    __slots__ = ("store_id", "global_version", "transaction_items", "delete_items")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DELETE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    global_version: int
    transaction_items: _containers.RepeatedCompositeFieldContainer[KeyValue]
    delete_items: _containers.RepeatedCompositeFieldContainer[KeyValue]
    def __init__(self, store_id: _Optional[str] = ..., global_version: _Optional[int] = ..., transaction_items: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., delete_items: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ...) -> None: ...

class PutObjectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteObjectRequest(_message.Message):
    __slots__ = ("store_id", "key_value")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VALUE_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    key_value: KeyValue
    def __init__(self, store_id: _Optional[str] = ..., key_value: _Optional[_Union[KeyValue, _Mapping]] = ...) -> None: ...

class DeleteObjectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeyVersionsRequest(_message.Message):
    __slots__ = ("store_id", "key_prefix", "page_size", "page_token")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    key_prefix: str
    page_size: int
    page_token: str
    def __init__(self, store_id: _Optional[str] = ..., key_prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListKeyVersionsResponse(_message.Message):
    __slots__ = ("key_versions", "next_page_token", "global_version")
    KEY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    key_versions: _containers.RepeatedCompositeFieldContainer[KeyValue]
    next_page_token: str
    global_version: int
    def __init__(self, key_versions: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., global_version: _Optional[int] = ...) -> None: ...

class ErrorResponse(_message.Message):
    __slots__ = ("error_code", "message")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    error_code: ErrorCode
    message: str
    def __init__(self, error_code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...
