from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

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
