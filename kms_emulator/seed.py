"""Seed files: principals and keys (with versions, state, rotation and aliases).

Loading is idempotent: a key whose KeyId exists is left alone, an alias that
exists is left alone. A key without ``key_id`` gets a UUID derived from its seed
entry, so loading the same file twice still finds it. Errors name the line.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from envelope_mq.kms_emulator.actions import ACTIONS
from envelope_mq.kms_emulator.alias_ops import ALIAS_NAME
from envelope_mq.kms_emulator.errors import ApiError, SeedError
from envelope_mq.kms_emulator.model import KEY_STATES, SYMMETRIC_SPECS, Key, KeyVersion
from envelope_mq.kms_emulator.oidc import OidcProvider, audiences, public_keys
from envelope_mq.kms_emulator.params import parse_date, parse_interval
from envelope_mq.kms_emulator.policy import Principal

__all__ = ["KeySeed", "RoleSeed", "Seed", "VersionSeed", "load_seed"]

_ROLE_ARN = re.compile(r"acs:ram::\d+:role/[A-Za-z0-9._-]{1,64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAMESPACE = uuid.UUID("5f0b7a55-6a4e-4d0c-9a43-7d1f2b8e6c01")
_DEFAULT_PENDING_WINDOW = 30 * 86400
_Path = tuple[str | int, ...]


@dataclass(frozen=True)
class VersionSeed:
    """One seeded key version."""

    version_id: str
    material: bytes
    created: int | None


@dataclass(frozen=True)
class KeySeed:
    """One seeded key; ``None`` dates mean "when loaded"."""

    key_id: str
    description: str
    key_spec: str
    state: str
    origin: str
    protection_level: str
    aliases: tuple[str, ...]
    rotation_interval: int | None
    versions: tuple[VersionSeed, ...]
    created: int | None
    delete_date: int | None
    line: int | None

    def build(self, now: int) -> Key:
        """A new Key from this entry; material is generated when none is given."""
        first = self.versions[0].created if self.versions else None
        created = self.created or first or now
        key = Key(
            key_id=self.key_id,
            created=created,
            key_spec=self.key_spec,
            description=self.description,
            state=self.state,
            origin=self.origin,
            protection_level=self.protection_level,
            rotation_interval=self.rotation_interval,
        )
        if self.state == "PendingDeletion":
            key.delete_date = self.delete_date or now + _DEFAULT_PENDING_WINDOW
        key.versions = [
            KeyVersion(v.version_id, self.key_id, v.created or created, v.material)
            for v in self.versions
        ]
        if not key.versions and self.origin != "EXTERNAL":
            material = os.urandom(SYMMETRIC_SPECS[self.key_spec])
            key.versions.append(
                KeyVersion(str(uuid.uuid4()), self.key_id, created, material)
            )
        return key


@dataclass(frozen=True)
class RoleSeed:
    """A RAM role STS may issue temporary credentials for.

    ``actions``/``keys`` are what its sessions may do (as a principal's);
    ``assumable_by`` the AccessKey ids allowed to AssumeRole it ("*": any);
    ``oidc_provider`` the provider whose tokens AssumeRoleWithOIDC accepts,
    restricted to ``oidc_subjects`` when given; ``credentials_uri`` serves it
    on the emulator's credentials-URI endpoint.
    """

    arn: str
    actions: frozenset[str]
    keys: frozenset[str]
    assumable_by: frozenset[str]
    oidc_provider: str | None
    oidc_subjects: frozenset[str]
    credentials_uri: bool
    max_session_duration: int

    @property
    def name(self) -> str:
        """The role's name: the ARN's last part."""
        return self.arn.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Seed:
    """A parsed seed: where it came from, its principals, keys, roles, providers."""

    source: str
    principals: tuple[Principal, ...]
    keys: tuple[KeySeed, ...]
    roles: tuple[RoleSeed, ...] = ()
    oidc_providers: tuple[OidcProvider, ...] = ()

    def error(self, line: int | None, reason: str) -> SeedError:
        """A SeedError about this seed."""
        return SeedError(self.source, line, reason)


class _Lines:
    """Line numbers of the nodes of a YAML (or JSON) document, by path."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root

    def __call__(self, path: _Path) -> int | None:
        node, line = self._root, None
        for step in path:
            if node is None:
                break
            line = node.start_mark.line + 1
            node = self._child(node, step)
        if node is not None:
            line = node.start_mark.line + 1
        return line

    @staticmethod
    def _child(node: yaml.Node, step: str | int) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            for key, value in node.value:
                if getattr(key, "value", None) == step:
                    return value  # type: ignore[no-any-return]
        if (
            isinstance(node, yaml.SequenceNode)
            and isinstance(step, int)
            and 0 <= step < len(node.value)
        ):
            return node.value[step]  # type: ignore[no-any-return]
        return None


class _Parser:
    def __init__(self, source: str, lines: _Lines, base: Path | None = None) -> None:
        self.source = source
        self.lines = lines
        self.base = base  # relative jwks_file paths start here

    def fail(self, path: _Path, reason: str) -> SeedError:
        where = ".".join(str(p) for p in path) or "document"
        return SeedError(self.source, self.lines(path), f"{where}: {reason}")

    def mapping(
        self, value: Any, path: _Path, allowed: Sequence[str]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "expected a mapping")
        for name in value:
            if name not in allowed:
                raise self.fail((*path, name), f"unknown field {name!r}")
        return value

    def text(self, value: Any, path: _Path, *, empty: bool = False) -> str:
        if not isinstance(value, str) or (not empty and not value):
            raise self.fail(path, "expected a non-empty string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise self.fail(path, "expected UTF-8 text") from exc
        return value

    def strings(self, value: Any, path: _Path) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(path, "expected a list of strings")
        return [self.text(item, (*path, i)) for i, item in enumerate(value)]

    def date(self, value: Any, path: _Path) -> int | None:
        if value is None:
            return None
        if isinstance(value, dt.datetime):  # YAML reads an unquoted timestamp
            stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            return int(stamp.timestamp())
        try:
            return parse_date(self.text(value, path))
        except ValueError as exc:
            raise self.fail(path, "expected a date YYYY-MM-DDTHH:MM:SSZ") from exc

    def uuid(self, value: Any, path: _Path) -> str:
        if not isinstance(value, str) or not _UUID.fullmatch(value):
            raise self.fail(path, "expected a lowercase UUID (36 characters)")
        return value

    def principal(self, value: Any, path: _Path) -> Principal:
        fields = ("access_key_id", "access_key_secret", "actions", "keys")
        item = self.mapping(value, path, fields)
        for name in fields[:3]:
            if name not in item:
                raise self.fail(path, f"missing field {name!r}")
        actions = self.strings(item["actions"], (*path, "actions"))
        for i, action in enumerate(actions):
            if action != "*" and action not in ACTIONS:
                raise self.fail((*path, "actions", i), f"unknown action {action!r}")
        keys = self.strings(item.get("keys", ["*"]), (*path, "keys"))
        return Principal(
            self.text(item["access_key_id"], (*path, "access_key_id")),
            self.text(item["access_key_secret"], (*path, "access_key_secret")),
            frozenset(actions),
            frozenset(keys),
        )

    def version(self, value: Any, path: _Path, size: int) -> VersionSeed:
        item = self.mapping(value, path, ("version_id", "material", "created"))
        for name in ("version_id", "material"):
            if name not in item:
                raise self.fail(path, f"missing field {name!r}")
        try:
            material = base64.b64decode(
                self.text(item["material"], (*path, "material")), validate=True
            )
        except (ValueError, binascii.Error) as exc:
            raise self.fail((*path, "material"), "expected base64") from exc
        if len(material) != size:
            raise self.fail((*path, "material"), f"expected {size} bytes of material")
        return VersionSeed(
            self.uuid(item["version_id"], (*path, "version_id")),
            material,
            self.date(item.get("created"), (*path, "created")),
        )

    def choice(self, item: dict[str, Any], name: str, path: _Path,
               default: str, allowed: Sequence[str]) -> str:  # fmt: skip
        value = item.get(name, default)
        if value not in allowed:
            raise self.fail((*path, name), f"expected one of {', '.join(allowed)}")
        return str(value)

    def rotation(self, value: Any, path: _Path) -> int | None:
        item = self.mapping(value, path, ("enabled", "interval"))
        enabled = item.get("enabled", False)
        if not isinstance(enabled, bool):
            raise self.fail((*path, "enabled"), "expected true or false")
        if not enabled:
            return None
        text = self.text(item.get("interval", "365d"), (*path, "interval"))
        try:
            return parse_interval(text, "interval", 7, 730)
        except ApiError as exc:
            raise self.fail((*path, "interval"), "expected 7d to 730d") from exc

    def key(self, value: Any, path: _Path) -> KeySeed:
        fields = (
            "key_id", "description", "key_spec", "state", "origin",
            "protection_level", "aliases", "rotation", "versions", "created",
            "delete_date",
        )  # fmt: skip
        item = self.mapping(value, path, fields)
        spec = self.choice(
            item, "key_spec", path, "Aliyun_AES_256", list(SYMMETRIC_SPECS)
        )
        state = self.choice(item, "state", path, "Enabled", KEY_STATES)
        default_origin = "EXTERNAL" if state == "PendingImport" else "Aliyun_KMS"
        origin = self.choice(
            item, "origin", path, default_origin, ("Aliyun_KMS", "EXTERNAL")
        )
        raw_versions = item.get("versions", [])
        if not isinstance(raw_versions, list):
            raise self.fail((*path, "versions"), "expected a list")
        versions = tuple(
            self.version(v, (*path, "versions", i), SYMMETRIC_SPECS[spec])
            for i, v in enumerate(raw_versions)
        )
        if (origin == "EXTERNAL") != (state == "PendingImport") or (
            origin == "EXTERNAL" and versions
        ):
            raise self.fail(
                path, "PendingImport goes with origin EXTERNAL and no versions"
            )
        aliases = self.strings(item.get("aliases", []), (*path, "aliases"))
        for i, name in enumerate(aliases):
            if not ALIAS_NAME.fullmatch(name) or name.startswith("alias/acs"):
                raise self.fail((*path, "aliases", i), f"invalid alias name {name!r}")
        delete_date = self.date(item.get("delete_date"), (*path, "delete_date"))
        if delete_date is not None and state != "PendingDeletion":
            raise self.fail((*path, "delete_date"), "only for state PendingDeletion")
        interval = self.rotation(item.get("rotation", {}), (*path, "rotation"))
        if interval is not None and origin == "EXTERNAL":
            raise self.fail((*path, "rotation"), "EXTERNAL keys cannot rotate")
        if "key_id" in item:
            key_id = self.uuid(item["key_id"], (*path, "key_id"))
        else:  # stable across loads: derived from the entry itself
            entry = json.dumps(item, sort_keys=True, default=str)
            key_id = str(uuid.uuid5(_NAMESPACE, entry))
        description = self.text(
            item.get("description", ""), (*path, "description"), empty=True
        )
        level = ("SOFTWARE", "HSM")
        return KeySeed(
            key_id, description, spec, state, origin,
            self.choice(item, "protection_level", path, "SOFTWARE", level),
            tuple(aliases), interval, versions,
            self.date(item.get("created"), (*path, "created")), delete_date,
            self.lines(path),
        )  # fmt: skip

    def actions(self, value: Any, path: _Path) -> frozenset[str]:
        actions = self.strings(value, path)
        for i, action in enumerate(actions):
            if action != "*" and action not in ACTIONS:
                raise self.fail((*path, i), f"unknown action {action!r}")
        return frozenset(actions)

    def role(self, value: Any, path: _Path) -> RoleSeed:
        fields = (
            "arn", "actions", "keys", "assumable_by", "oidc_provider",
            "oidc_subjects", "credentials_uri", "max_session_duration",
        )  # fmt: skip
        item = self.mapping(value, path, fields)
        for name in ("arn", "actions"):
            if name not in item:
                raise self.fail(path, f"missing field {name!r}")
        arn = self.text(item["arn"], (*path, "arn"))
        if not _ROLE_ARN.fullmatch(arn):
            raise self.fail((*path, "arn"), "expected acs:ram::<account>:role/<name>")
        uri = item.get("credentials_uri", False)
        if not isinstance(uri, bool):
            raise self.fail((*path, "credentials_uri"), "expected true or false")
        longest = item.get("max_session_duration", 3600)
        if not isinstance(longest, int) or not 900 <= longest <= 43200:
            raise self.fail((*path, "max_session_duration"), "expected 900 to 43200")
        provider = item.get("oidc_provider")
        return RoleSeed(
            arn=arn,
            actions=self.actions(item["actions"], (*path, "actions")),
            keys=frozenset(self.strings(item.get("keys", ["*"]), (*path, "keys"))),
            assumable_by=frozenset(
                self.strings(item.get("assumable_by", []), (*path, "assumable_by"))
            ),
            oidc_provider=(
                None
                if provider is None
                else self.text(provider, (*path, "oidc_provider"))
            ),
            oidc_subjects=frozenset(
                self.strings(item.get("oidc_subjects", []), (*path, "oidc_subjects"))
            ),
            credentials_uri=uri,
            max_session_duration=longest,
        )

    def oidc_provider(self, value: Any, path: _Path) -> OidcProvider:
        fields = ("arn", "issuer", "client_ids", "jwks", "jwks_file")
        item = self.mapping(value, path, fields)
        for name in ("arn", "issuer"):
            if name not in item:
                raise self.fail(path, f"missing field {name!r}")
        if ("jwks" in item) == ("jwks_file" in item):
            raise self.fail(path, "give exactly one of 'jwks' and 'jwks_file'")
        jwks = item.get("jwks")
        if "jwks_file" in item:
            given = Path(self.text(item["jwks_file"], (*path, "jwks_file")))
            if not given.is_absolute() and self.base is not None:
                given = self.base / given
            try:
                jwks = json.loads(given.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                raise self.fail((*path, "jwks_file"), f"cannot read: {exc}") from exc
        try:
            keys = public_keys(jwks if isinstance(jwks, dict) else {})
        except ValueError as exc:
            raise self.fail((*path, "jwks"), str(exc)) from exc
        return OidcProvider(
            arn=self.text(item["arn"], (*path, "arn")),
            issuer=self.text(item["issuer"], (*path, "issuer")),
            audiences=audiences(
                self.strings(item.get("client_ids", []), (*path, "client_ids"))
            ),
            keys=keys,
        )

    def seed(self, document: Any) -> Seed:
        if document is None:
            document = {}
        top = self.mapping(
            document, (), ("principals", "keys", "roles", "oidc_providers")
        )
        sections = {
            name: top.get(name) or []
            for name in ("principals", "keys", "roles", "oidc_providers")
        }
        for name, value in sections.items():
            if not isinstance(value, list):
                raise self.fail((name,), "expected a list")
        seed = Seed(
            self.source,
            tuple(
                self.principal(p, ("principals", i))
                for i, p in enumerate(sections["principals"])
            ),
            tuple(self.key(k, ("keys", i)) for i, k in enumerate(sections["keys"])),
            tuple(self.role(r, ("roles", i)) for i, r in enumerate(sections["roles"])),
            tuple(
                self.oidc_provider(o, ("oidc_providers", i))
                for i, o in enumerate(sections["oidc_providers"])
            ),
        )
        self.unique(
            [(r.arn, ("roles", i)) for i, r in enumerate(seed.roles)], "role arn"
        )
        self.unique(
            [(r.name, ("roles", i)) for i, r in enumerate(seed.roles)], "role name"
        )
        known = {o.arn for o in seed.oidc_providers}
        for i, role in enumerate(seed.roles):
            if role.oidc_provider is not None and role.oidc_provider not in known:
                raise self.fail(
                    ("roles", i, "oidc_provider"), "no such entry in oidc_providers"
                )
        self.unique(
            [(p.access_key_id, ("principals", i, "access_key_id"))
             for i, p in enumerate(seed.principals)], "access_key_id",
        )  # fmt: skip
        self.unique(
            [(k.key_id, ("keys", i)) for i, k in enumerate(seed.keys)], "key_id"
        )
        self.unique(
            [(v.version_id, ("keys", i, "versions", j))
             for i, k in enumerate(seed.keys) for j, v in enumerate(k.versions)],
            "version_id",
        )  # fmt: skip
        self.unique(
            [(a, ("keys", i, "aliases", j))
             for i, k in enumerate(seed.keys) for j, a in enumerate(k.aliases)],
            "alias",
        )  # fmt: skip
        return seed

    def unique(self, entries: list[tuple[str, _Path]], what: str) -> None:
        seen: set[str] = set()
        for value, path in entries:
            if value in seen:
                raise self.fail(path, f"duplicate {what} {value!r}")
            seen.add(value)


def _read(path: Path) -> tuple[Any, _Lines]:
    source = str(path)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SeedError(source, None, f"cannot read: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SeedError(source, exc.lineno, exc.msg) from exc
        try:  # JSON is (nearly always) YAML, which gives node lines
            return document, _Lines(yaml.compose(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError:
            return document, _Lines(None)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise SeedError(source, line, str(reason)) from exc
    return document, _Lines(root)


def load_seed(seed: str | os.PathLike[str] | Mapping[str, Any]) -> Seed:
    """Parse and validate a seed file (YAML or JSON) or an already-loaded mapping."""
    if isinstance(seed, Mapping):
        return _Parser("<seed>", _Lines(None)).seed(dict(seed))
    path = Path(seed)
    document, lines = _read(path)
    return _Parser(str(path), lines, path.parent).seed(document)
