"""Image references and pull failures, worded as containerd and the kubelet word them.

The kubelet first parses the container's image (a reference it cannot parse leaves the
container waiting in ``InvalidImageName`` for good, nothing is pulled), then asks the runtime
to pull it. Which pulls fail, and how, is decided by the image's name:

- images matching the cluster's ``failing_images`` do not exist: ``rpc error: code = NotFound
  desc = failed to pull and unpack image "docker.io/bad/image:1": failed to resolve reference
  "docker.io/bad/image:1": docker.io/bad/image:1: not found``;
- a repository path starting ``unreachable/`` times out (``dial tcp ...: i/o timeout``),
  ``ratelimited/`` gets ``429 Too Many Requests``, ``private/`` gets ``401 Unauthorized``: all
  failures that may heal.

Simplified: no credentials or registries are ever contacted.
"""

from __future__ import annotations

import re

__all__ = ["invalid_reference", "normalized", "pull_error"]

# The reference grammar of distribution/reference, enough to tell what the kubelet refuses.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
_TRANSIENT = (
    (
        re.compile(r"(^|/)unreachable/"),
        'failed to do request: Head "https://{registry}/v2/{path}/manifests/{tag}": '
        "dial tcp 10.96.0.42:443: i/o timeout",
    ),
    (
        re.compile(r"(^|/)ratelimited/"),
        "unexpected status from HEAD request to https://{registry}/v2/{path}/manifests/{tag}: "
        "429 Too Many Requests - Server message: toomanyrequests: You have reached your pull "
        "rate limit. You may increase the limit by authenticating and upgrading: "
        "https://www.docker.com/increase-rate-limit",
    ),
    (
        re.compile(r"(^|/)private/"),
        "failed to authorize: failed to fetch oauth token: unexpected status from GET request "
        "to https://{auth}/token?scope=repository%3A{path}%3Apull: 401 Unauthorized",
    ),
)


def invalid_reference(image: str) -> str | None:
    """The kubelet's message for an image it cannot parse, or None if it parses."""
    if _REFERENCE.match(image):
        return None
    detail = "invalid reference format"
    if image.lower() != image and _REFERENCE.match(image.lower()):
        detail += ": repository name must be lowercase"
    return (
        f'Failed to apply default image tag "{image}": couldn\'t parse image name "{image}": '
        f"{detail}"
    )


def normalized(image: str) -> tuple[str, str, str]:
    """(registry, repository path, tag) as containerd completes them: docker.io, library/..."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = "latest"
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    if digest:
        tag = digest
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", name
    if registry == "docker.io" and "/" not in path:
        path = f"library/{path}"
    return registry, path, tag


def pull_error(image: str, missing: re.Pattern[str]) -> str | None:
    """The message of an ``ErrImagePull`` for ``image``, or None if it can be pulled."""
    registry, path, tag = normalized(image)
    separator = "@" if tag.startswith("sha256:") else ":"
    ref = f"{registry}/{path}{separator}{tag}"
    if missing.search(image):
        return (
            f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": '
            f'failed to resolve reference "{ref}": {ref}: not found'
        )
    for pattern, template in _TRANSIENT:
        if pattern.search(image):
            hub = registry == "docker.io"
            cause = template.format(
                registry="registry-1.docker.io" if hub else registry,
                auth="auth.docker.io" if hub else registry,
                path=path,
                tag=tag,
            )
            return (
                f'rpc error: code = Unknown desc = failed to pull and unpack image "{ref}": '
                f'failed to resolve reference "{ref}": {cause}'
            )
    return None
