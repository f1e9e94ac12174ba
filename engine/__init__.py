"""The Flowyard engine: ``flowyard-engine execute <run-id>`` runs one attempt of a flow run.

It starts inside the run's infrastructure, asks the control plane what to run, fetches the
code, calls the flow function in the main thread and reports states and log lines over the
``EngineService.Report`` stream. The package's import graph stays light (no database, no
Kubernetes client), and :mod:`engine.entrypoints` and :mod:`engine.schema` are pure modules
that the control plane and the CLI import to validate deployments.

This ``__init__`` imports nothing on purpose: importing ``engine.entrypoints`` must not pull in
gRPC.
"""
