"""What the control plane, the agent and the engine share: pure functions on plain data.

Each module here is used by at least two of the three and imports none of them:

=================  ==========================================================================
``aiotasks``       cancelling one's own asyncio tasks without swallowing one's own cancellation
``entrypoints``    parsing ``path/to/file.py:fn`` and ``package.module:fn``
``forking``        turning gRPC's fork handlers off in every Flowyard process
``loglines``       the size limit of one log line, and how a longer line is cut
``manifests``      Kubernetes manifests as the YAML kubectl reads (both install commands)
``templates``      base job templates: placeholders, job variables, their JSON Schema checks
``urls``           keeping credentials in URLs out of messages and logs
=================  ==========================================================================

The engine imports ``entrypoints``, ``loglines`` and ``urls``, which (like ``aiotasks``) need
only the standard library; ``templates`` needs ``jsonschema`` and ``manifests`` PyYAML: those two
are for the agent and the control plane only.
Import-linter contracts in ``pyproject.toml`` keep it so.
"""
