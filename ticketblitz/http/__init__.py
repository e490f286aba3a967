"""HTTP/1.1 apart from I/O: the door's parser, checks and answer bytes (`core`), request-target forms
(`target`), chunked bodies (`chunked`), and what relaying to Hypercorn needs (`relay`)."""

from .core import (
    CLOSED,
    END,
    NEED_DATA,
    Data,
    Limits,
    Phase,
    Refusal,
    Request,
    ServerConnection,
    TargetForm,
    serialize,
)

__all__ = ["CLOSED", "END", "NEED_DATA", "Data", "Limits", "Phase", "Refusal", "Request", "ServerConnection",
           "TargetForm", "serialize"]
