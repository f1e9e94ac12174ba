"""The control plane's HTTP side: the web UI, its JSON + Server-Sent-Events API, health
probes and metrics, over the same use cases as the gRPC API (see ``app``)."""
