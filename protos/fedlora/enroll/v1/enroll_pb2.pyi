from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("token_id", "token_secret", "public_key")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SECRET_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    token_secret: str
    public_key: str
    def __init__(self, token_id: _Optional[str] = ..., token_secret: _Optional[str] = ..., public_key: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("node_name", "node_id", "ca_certificate", "superlink_address")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SUPERLINK_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    node_id: int
    ca_certificate: bytes
    superlink_address: str
    def __init__(self, node_name: _Optional[str] = ..., node_id: _Optional[int] = ..., ca_certificate: _Optional[bytes] = ..., superlink_address: _Optional[str] = ...) -> None: ...

class ChallengeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class NodeStatusRequest(_message.Message):
    __slots__ = ("public_key", "nonce", "timestamp", "signature")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    public_key: str
    nonce: bytes
    timestamp: int
    signature: bytes
    def __init__(self, public_key: _Optional[str] = ..., nonce: _Optional[bytes] = ..., timestamp: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class NodeStatusResponse(_message.Message):
    __slots__ = ("status", "node_name", "revoked_at")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[NodeStatusResponse.Status]
        ENROLLED: _ClassVar[NodeStatusResponse.Status]
        REVOKED: _ClassVar[NodeStatusResponse.Status]
        UNKNOWN: _ClassVar[NodeStatusResponse.Status]
    STATUS_UNSPECIFIED: NodeStatusResponse.Status
    ENROLLED: NodeStatusResponse.Status
    REVOKED: NodeStatusResponse.Status
    UNKNOWN: NodeStatusResponse.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    status: NodeStatusResponse.Status
    node_name: str
    revoked_at: float
    def __init__(self, status: _Optional[_Union[NodeStatusResponse.Status, str]] = ..., node_name: _Optional[str] = ..., revoked_at: _Optional[float] = ...) -> None: ...
