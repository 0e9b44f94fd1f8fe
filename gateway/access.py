"""Endpoint groups and who may call them: every REST route, gRPC method and the metrics port
belongs to exactly one group, and each group is open, protected by a header key, or refused.

Following Triton's restricted APIs: a ``--protect GROUP[,GROUP]:HEADER[:KEYS_FILE]`` rule makes
its groups require one of the accepted keys in ``HEADER``. Keys come from the rule's own file,
or else from ``--api-keys-file`` / ``TENSORGATE_API_KEYS`` — never from the command line, and
never logged. ``model-repository`` and ``shared-memory`` (which change what the server runs and
map client memory) are refused unless protected, or opened with ``--open-groups``; every other
group is open unless protected. The transports ask the group's ``Gate`` (``AccessPolicy.gates``).

The group maps below are the one place that says which endpoint is in which group; a test checks
that every route of the REST app and every method of each served gRPC service is in one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gateway.logs import log_event

if TYPE_CHECKING:
    from gateway.settings import Settings

log = logging.getLogger("tensorgate.access")

GROUPS = ("inference", "health", "metadata", "statistics", "model-repository", "shared-memory", "metrics")
#: Groups refused unless protected by a key or opened explicitly.
REFUSED_BY_DEFAULT = ("model-repository", "shared-memory")
#: The variable holding the shared keys (comma-separated), for rules without a keys file.
KEYS_VARIABLE = "TENSORGATE_API_KEYS"
#: The shortest key accepted: a key is a secret, not a password (``openssl rand -hex 32`` makes one).
MIN_KEY_LENGTH = 16
#: At most one refusal line per group and reason in this many seconds (a flood of bad keys stays a trickle).
LOG_INTERVAL_S = 10.0

# -- which endpoint is in which group -------------------------------------------------------

#: REST paths by prefix: a path equal to, or below, one of these (segments of the decoded path).
REST_PREFIXES: dict[tuple[str, ...], str] = {
    ("v2", "health"): "health",
    ("v2", "repository"): "model-repository",
    ("v2", "systemsharedmemory"): "shared-memory",
    ("v2", "cudasharedmemory"): "shared-memory",
}
#: REST paths matched exactly.
REST_EXACT: dict[str, str] = {
    "/v2": "metadata",
    "/v2/models": "metadata",
    "/v2/models/stats": "statistics",
    "/docs": "metadata",
    "/docs/oauth2-redirect": "metadata",
    "/openapi.json": "metadata",
}
#: /v2/models/{model}[/versions/{version}]<suffix>, by suffix.
REST_MODEL_SUFFIXES: dict[str, str] = {
    "": "metadata",
    "config": "metadata",
    "ready": "health",
    "infer": "inference",
    "stats": "statistics",
}
#: TF Serving's /v1/models/{model}[/versions/{v}|/labels/{l}]<suffix>, by suffix; a ``:verb`` on the last
#: segment (``:predict``, ``:classify``, ``:regress``) is inference.
TFS_MODEL_SUFFIXES: dict[str, str] = {
    "": "health",  # the model status, which TF Serving users probe for readiness
    "metadata": "metadata",
}
#: gRPC services: a whole service in one group, or its methods each in one.
GRPC_SERVICES: dict[str, str | dict[str, str]] = {
    "grpc.health.v1.Health": "health",
    "tensorflow.serving.PredictionService": {
        "Predict": "inference",
        "Classify": "inference",
        "Regress": "inference",
        "MultiInference": "inference",
        "GetModelMetadata": "metadata",
    },
    "tensorflow.serving.ModelService": {
        "GetModelStatus": "health",
        "HandleReloadConfigRequest": "model-repository",
    },
    "tensorflow.serving.SessionService": "inference",
    "inference.GRPCInferenceService": {
        "ServerLive": "health",
        "ServerReady": "health",
        "ModelReady": "health",
        "ServerMetadata": "metadata",
        "ModelMetadata": "metadata",
        "ModelConfig": "metadata",
        "ModelInfer": "inference",
        "ModelStreamInfer": "inference",
        "ModelStatistics": "statistics",
        "RepositoryIndex": "model-repository",
        "RepositoryModelLoad": "model-repository",
        "RepositoryModelUnload": "model-repository",
        "SystemSharedMemoryStatus": "shared-memory",
        "SystemSharedMemoryRegister": "shared-memory",
        "SystemSharedMemoryUnregister": "shared-memory",
        "CudaSharedMemoryStatus": "shared-memory",
        "CudaSharedMemoryRegister": "shared-memory",
        "CudaSharedMemoryUnregister": "shared-memory",
    },
}


def rest_group(path: str) -> str | None:
    """The group of a REST path as the app routes it (decoded); None for a path no route serves."""
    exact = REST_EXACT.get(path)
    if exact is not None:
        return exact
    segments = tuple(path.split("/")[1:]) if path.startswith("/") else ()
    for length in (2, 1):
        group = REST_PREFIXES.get(segments[:length]) if len(segments) >= length else None
        if group is not None:
            return group
    if segments[:2] == ("v1", "models"):
        return _tfs_group(segments[2:])
    if segments[:2] != ("v2", "models") or len(segments) < 3 or not segments[2]:
        return None
    rest = segments[3:]
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        rest = rest[2:]
    if len(rest) > 1:
        return None
    return REST_MODEL_SUFFIXES.get(rest[0] if rest else "")


def _tfs_group(segments: tuple[str, ...]) -> str | None:
    """TF Serving's REST paths below /v1/models/."""
    if not segments or not segments[0]:
        return None
    if ":" in segments[-1]:  # a verb: whatever it is, the request reaches the :predict handler
        return "inference" if len(segments) in (1, 3) and segments[-1].partition(":")[0] else None
    rest = segments[1:]
    if len(rest) >= 2 and rest[0] in ("versions", "labels") and rest[1]:
        rest = rest[2:]
    if len(rest) > 1:
        return None
    return TFS_MODEL_SUFFIXES.get(rest[0] if rest else "")


def grpc_group(method: str) -> str | None:
    """The group of a gRPC method (``/package.Service/Method``); None for a service not listed."""
    service, _, name = method.lstrip("/").partition("/")
    groups = GRPC_SERVICES.get(service)
    if isinstance(groups, dict):
        return groups.get(name)
    return groups


# -- the rules --------------------------------------------------------------------------------

_HEADER = re.compile(r"[a-z0-9][a-z0-9-]*")
#: Headers that carry the protocol itself, never a key.
_RESERVED_HEADERS = frozenset(("content-type", "content-length", "content-encoding", "host", "connection", "te",
                               "transfer-encoding", "expect", "user-agent", "origin",
                               "inference-header-content-length"))


@dataclass(frozen=True)
class ProtectRule:
    """One ``--protect`` rule: its groups need a key in ``header``, from ``keys_file`` or the shared keys."""

    groups: tuple[str, ...]
    header: str
    keys_file: Path | None


def parse_rule(text: str) -> ProtectRule:
    """``GROUP[,GROUP]:HEADER[:KEYS_FILE]``; ValueError saying what is wrong."""
    parts = text.strip().split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"{text!r} is not GROUP[,GROUP]:HEADER[:KEYS_FILE]")
    groups = tuple(g.strip().lower() for g in parts[0].split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if not groups or unknown:
        raise ValueError(f"{text!r}: unknown group {', '.join(unknown) or '(none given)'}; the groups are "
                         f"{', '.join(GROUPS)}")
    header = parts[1].strip().lower()
    if not _HEADER.fullmatch(header) or header.startswith("grpc-") or header in _RESERVED_HEADERS:
        raise ValueError(f"{text!r}: {header!r} cannot carry a key (use a header name of letters, digits and "
                         "dashes that the protocol does not use, e.g. x-api-key)")
    keys_file = Path(parts[2].strip()) if len(parts) == 3 and parts[2].strip() else None
    return ProtectRule(groups, header, keys_file)


def check_rules(rules: Sequence[str], open_groups: Sequence[str]) -> None:
    """Rules that do not go together: a group in two rules, or both protected and opened."""
    seen: dict[str, str] = {}
    for text in rules:
        for group in parse_rule(text).groups:
            if group in seen:
                raise ValueError(f"--protect: group {group} is in two rules ({seen[group]!r} and {text!r})")
            seen[group] = text
    for group in open_groups:
        if group in seen:
            raise ValueError(f"--open-groups: {group} is also protected by {seen[group]!r}; choose one")


# -- the keys -----------------------------------------------------------------------------------

class AccessError(ValueError):
    """Keys that cannot be used (missing, empty or malformed); the message names where, never a key."""


def _valid_key(key: str) -> bool:
    return len(key) >= MIN_KEY_LENGTH and all("!" <= c <= "~" and c != "," for c in key)


_KEY_RULE = (f"a key is at least {MIN_KEY_LENGTH} printable ASCII characters without spaces or commas "
             "(e.g. from openssl rand -hex 32)")


def read_keys_file(path: Path) -> tuple[str, ...]:
    """One key per line; blank lines and the whitespace around keys are ignored."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise AccessError(f"API keys file {path}: no such file") from None
    except UnicodeDecodeError:
        raise AccessError(f"API keys file {path}: not ASCII text; {_KEY_RULE}") from None
    except OSError as exc:
        raise AccessError(f"API keys file {path}: cannot be read ({exc.strerror})") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if key and not _valid_key(key):
            raise AccessError(f"API keys file {path}, line {number}: not a valid key; {_KEY_RULE}")
        if key:
            keys.append(key)
    if not keys:
        raise AccessError(f"API keys file {path}: no keys in it (one key per line)")
    return tuple(keys)


def _variable_keys(value: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    if not keys:
        raise AccessError(f"{KEYS_VARIABLE}: no keys in it (comma-separated)")
    for number, key in enumerate(keys, 1):
        if not _valid_key(key):
            raise AccessError(f"{KEYS_VARIABLE}: key {number} is not a valid key; {_KEY_RULE}")
    return keys


def _shared_keys(keys_file: Path | None, environ: Mapping[str, str]) -> tuple[str, ...] | None:
    variable = environ.get(KEYS_VARIABLE)
    if keys_file is not None and variable is not None:
        raise AccessError(f"--api-keys-file and {KEYS_VARIABLE} are both set; give the keys in one of them")
    if keys_file is not None:
        return read_keys_file(keys_file)
    return _variable_keys(variable) if variable is not None else None


# -- the policy ---------------------------------------------------------------------------------

Reason = Literal["missing", "repeated", "wrong", "refused"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was refused; ``status`` 401 or 403 (gRPC UNAUTHENTICATED or PERMISSION_DENIED)."""

    group: str
    reason: Reason
    header: str
    message: str

    @property
    def status(self) -> int:
        return 403 if self.reason == "refused" else 401

    @property
    def grpc_code(self) -> str:
        return "PERMISSION_DENIED" if self.reason == "refused" else "UNAUTHENTICATED"


class Gate:
    """One group's rule: ``open`` (anyone), or a header and the SHA-256 of the keys it accepts (none: refused)."""

    __slots__ = ("_digests", "group", "header", "header_bytes", "open")

    def __init__(self, group: str, header: str = "", keys: Sequence[str] = (), *, open: bool = False) -> None:
        self.group = group
        self.open = open
        self.header = header
        self.header_bytes = header.encode()
        # Digests, so that every comparison is of 32 bytes: its time says nothing of a key's length.
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    def check(self, values: Sequence[bytes]) -> Refusal | None:
        """None when ``values`` (every value of this gate's header in the call) is exactly one accepted key."""
        if self.open:
            return None
        if not self._digests:
            return Refusal(self.group, "refused", self.header,
                           f"the {self.group} API is disabled on this server: no key is configured for it "
                           f"(--protect {self.group}:HEADER)")
        if not values:
            return Refusal(self.group, "missing", self.header,
                           f"the {self.group} API requires a key in the {self.header} header")
        if len(values) > 1 or b"," in values[0]:
            return Refusal(self.group, "repeated", self.header,
                           f"the {self.header} header must be given once, with exactly one key")
        digest = hashlib.sha256(values[0].strip(b" \t")).digest()
        accepted = False
        for known in self._digests:  # every key compared, in constant time: no early exit says which
            accepted |= hmac.compare_digest(known, digest)
        if accepted:
            return None
        return Refusal(self.group, "wrong", self.header,
                       f"the key in the {self.header} header is not accepted for the {self.group} API")


class AccessPolicy:
    """Every group's gate, and the rate-limited log of refusals (never a key)."""

    def __init__(self, gates: Mapping[str, Gate]) -> None:
        self.gates = {group: gates.get(group) or Gate(group, open=True) for group in GROUPS}
        self._last_logged: dict[tuple[str, str], float] = {}
        self._unlogged: dict[tuple[str, str], int] = {}

    @property
    def headers(self) -> tuple[str, ...]:
        """The headers that carry keys (a browser must be allowed to send them: CORS)."""
        return tuple(sorted({gate.header for gate in self.gates.values() if gate.header}))

    def refused(self, refusal: Refusal, protocol: str, target: str, client: str | None) -> None:
        """Log a refusal: at most one line per group and reason every LOG_INTERVAL_S, counting the rest."""
        key = (refusal.group, refusal.reason)
        now = time.monotonic()
        last = self._last_logged.get(key)
        if last is not None and now - last < LOG_INTERVAL_S:
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
            return
        self._last_logged[key] = now
        log_event(log, "access_refused", level=logging.WARNING, group=refusal.group, reason=refusal.reason,
                  protocol=protocol, target=target, client=client or "-", header=refusal.header,
                  not_logged_since=self._unlogged.pop(key, 0))


def load_policy(settings: Settings, environ: Mapping[str, str] = os.environ) -> AccessPolicy:
    """The policy ``settings`` configure, with its keys read; AccessError names a missing or bad source."""
    shared = _shared_keys(settings.api_keys_file, environ)
    gates: dict[str, Gate] = {}
    for text in settings.protect:
        rule = parse_rule(text)
        if rule.keys_file is not None:
            keys = read_keys_file(rule.keys_file)
        else:
            if shared is None:
                raise AccessError(f"--protect {text}: no keys for it: give them in --api-keys-file or "
                                  f"{KEYS_VARIABLE}, or name a keys file in the rule (GROUPS:HEADER:FILE)")
            keys = shared
        for group in rule.groups:
            gates[group] = Gate(group, rule.header, keys)
    for group in REFUSED_BY_DEFAULT:
        if group not in gates:
            gates[group] = Gate(group, open=group in settings.open_groups)
    return AccessPolicy(gates)
