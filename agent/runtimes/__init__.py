"""Runtimes: where the agent creates run infrastructure.

``process`` runs each attempt as a local engine process; ``kubernetes`` as a Kubernetes Job.
Both sit behind the same :class:`~agent.runtimes.base.Runtime` interface; the agent picks one
when it starts (``agent.running.make_runtime``). Importing one runtime does not import the
other: the process runtime never loads the Kubernetes client.
"""
