"""Flowyard's control plane: the gRPC server that owns pools, deployments, runs and logs."""

__version__ = "0.1.0"
