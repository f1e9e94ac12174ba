"""Who may call what: tokens, their scopes, the admin token file and TLS.

- ``principals``: what a verified token stands for (admin, agent of a pool, engine of an attempt);
- ``registry``: minting, listing, revoking and verifying tokens, with a short cache;
- ``interceptor``: the one server interceptor that authenticates every Flowyard call and
  enforces each service's scope (health and reflection stay open);
- ``bootstrap``: the first admin token: a file created on first start, or the one given;
- ``transport``: TLS and mutual-TLS server credentials.
"""
