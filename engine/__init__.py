"""The Flowyard engine: ``flowyard-engine execute <run-id>`` runs one attempt of a flow run.

It starts inside the run's infrastructure, asks the control plane what to run, fetches the
code, calls the flow function in the main thread and reports states and log lines over the
``EngineService.Report`` stream. The package's import graph stays light (no database, no
Kubernetes client), and :mod:`engine.entrypoints` and :mod:`engine.schema` are pure modules
that the control plane and the CLI import to validate deployments.

This ``__init__`` imports nothing heavy on purpose: importing ``engine.entrypoints`` must not
pull in gRPC. It turns gRPC's fork support off (``flowyard_common.forking``) before gRPC loads.
"""

from flowyard_common.forking import keep_grpc_out_of_forks

keep_grpc_out_of_forks()
