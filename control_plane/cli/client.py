"""The CLI's connection to the control plane, and how its errors are shown."""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc

from control_plane.config import DEFAULT_PORT
from flowyard.v1 import control_plane_pb2_grpc

DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"


def default_server() -> str:
    """The control plane address: $FLOWYARD_SERVER or the local default."""
    return os.environ.get("FLOWYARD_SERVER", DEFAULT_SERVER)


@dataclass
class Client:
    """A channel to the control plane and its ``ControlPlaneService`` stub."""

    address: str
    channel: grpc.Channel
    stub: control_plane_pb2_grpc.ControlPlaneServiceStub

    @classmethod
    def connect(cls, address: str) -> Client:
        """A client for ``address`` (host:port); the connection is made on first use."""
        channel = grpc.insecure_channel(address)
        return cls(address, channel, control_plane_pb2_grpc.ControlPlaneServiceStub(channel))

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def describe(error: grpc.RpcError, address: str) -> str:
    """One line for a person: what the server said, or why it could not be reached."""
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    if code is grpc.StatusCode.UNAVAILABLE:
        return (
            f"cannot reach the control plane at {address}: is 'flowyard server start' running "
            "there? (set --server or FLOWYARD_SERVER)"
        )
    name = code.name if code is not None else "ERROR"
    return f"{details} ({name})"
