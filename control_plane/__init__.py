"""Flowyard's control plane: the gRPC server that owns pools, deployments, runs and logs."""

__version__ = "0.1.0"

from flowyard_common.forking import keep_grpc_out_of_forks

keep_grpc_out_of_forks()
