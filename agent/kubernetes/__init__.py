"""Kubernetes support for the agent: manifests, the API client, watches and pod diagnosis."""
