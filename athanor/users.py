"""Operators and viewers: `athanor users add|list|revoke`, and who a token belongs to.

A token is shown once, when its user is added, and kept only as a SHA-256 digest: tokens are 256
random bits, so a fast hash is enough (no password to stretch) and a stolen users.json grants nothing.
The file lives in $ATHANOR_HOME (default ~/.athanor), mode 0600, replaced atomically under a lock so
two `users add` at once both land and a crash never leaves half a file.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from athanor.errors import AthanorError

ROLES = ("operator", "viewer")
NAME_CHARS = re.compile(r"[A-Za-z0-9._@-]+")
RESERVED_PREFIX = "policy:"  # decisions made by an approval policy are recorded as "policy:NAME"
MAX_TOKEN_CHARS = 200  # real tokens are ~47 chars; refuse to hash megabytes sent by a stranger
DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class User:
    name: str
    role: str  # "operator" | "viewer"
    created_at: str  # ISO-8601 UTC
    revoked_at: str | None = None

    @property
    def can_decide(self) -> bool:
        return self.role == "operator" and self.revoked_at is None


def home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("ATHANOR_HOME") or Path.home() / ".athanor").expanduser()


_default_home = home  # Users.__init__'s parameter is named `home` too


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest().encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _valid(u: Any) -> bool:
    return (isinstance(u, dict) and u.get("role") in ROLES and isinstance(u.get("created_at"), str)
            and isinstance(u.get("token_sha256"), str) and DIGEST.fullmatch(u["token_sha256"]) is not None
            and isinstance(u.get("revoked_at"), (str, type(None))))


def check_name(name: str) -> None:
    problem = ("is empty" if not isinstance(name, str) or not name
               else f"is {len(name)} characters long: at most 64" if len(name) > 64
               else f"starts with {RESERVED_PREFIX!r}, kept for approval policies" if name.startswith(RESERVED_PREFIX)
               else "may hold only letters, digits and . _ @ -" if not NAME_CHARS.fullmatch(name) else None)
    if problem:
        raise AthanorError(f"user name {str(name)[:70]!r} {problem}")


class Users:
    """The users of this machine's Athanor, in $ATHANOR_HOME/users.json."""

    def __init__(self, home: Path | str | None = None):
        self.home = Path(home) if home is not None else _default_home()
        self.path = self.home / "users.json"

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AthanorError(f"{self.path}: cannot be read as the users file ({exc})") from None
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(users, dict) or not all(_valid(u) for u in users.values()):
            raise AthanorError(f"{self.path}: not a users file (expected {{\"users\": {{NAME: {{role, token_sha256, "
                               "created_at, revoked_at}}}}}}); fix or remove it, then add the users again")
        return users

    @contextmanager
    def _changing(self) -> Iterator[dict[str, dict[str, Any]]]:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(os.open(self.home / "users.lock", os.O_RDWR | os.O_CREAT, 0o600)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # read-modify-write as one step, or concurrent adds lose users
            users = self._read()
            yield users
            fd, tmp = tempfile.mkstemp(dir=self.home, prefix=".users-", suffix=".json")  # mode 0600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"users": users}, f, indent=2)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise

    def add(self, name: str, role: str) -> str:
        check_name(name)
        if role not in ROLES:
            raise AthanorError(f"role {role!r}: one of {', '.join(ROLES)}")
        token = "ath_" + secrets.token_urlsafe(32)
        with self._changing() as users:
            if name in users and users[name].get("revoked_at") is None:
                raise AthanorError(f"user {name!r} exists; revoke it first to issue a new token")
            users[name] = {"role": role, "token_sha256": _digest(token).decode(), "created_at": _now(),
                           "revoked_at": None}
        return token

    def revoke(self, name: str) -> User:
        with self._changing() as users:
            if name not in users:
                raise AthanorError(f"no user {name!r}; the users are {', '.join(users) or 'none yet'}")
            users[name]["revoked_at"] = users[name].get("revoked_at") or _now()
            return _user(name, users[name])

    def list(self) -> list[User]:
        return [_user(name, u) for name, u in self._read().items()]

    def any(self) -> bool:
        return any(u.revoked_at is None for u in self.list())

    def authenticate(self, token: str | None) -> User | None:
        """The user holding this token, None for a missing, unknown or revoked one."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            return None
        digest, found = _digest(token), None
        for name, u in self._read().items():  # every digest compared, each in constant time
            if hmac.compare_digest(digest, u["token_sha256"].encode()) and u.get("revoked_at") is None:
                found = _user(name, u)
        return found


def _user(name: str, u: Mapping[str, Any]) -> User:
    return User(name=name, role=u["role"], created_at=u["created_at"], revoked_at=u.get("revoked_at"))


def add_parser(sub: Any) -> None:
    users = sub.add_parser("users", help="operators and viewers, and their tokens ($ATHANOR_HOME/users.json)")
    actions = users.add_subparsers(dest="users_command", required=True)
    add = actions.add_parser("add", help="add a user and print their token (shown once)")
    add.add_argument("name", help="the name their decisions are recorded under")
    add.add_argument("--role", choices=ROLES, required=True, help="operator: decides; viewer: only reads")
    add.set_defaults(func=_add)
    listing = actions.add_parser("list", help="the users, their roles, and which are revoked")
    listing.add_argument("--json", action="store_true", help="a JSON list of name, role, created_at, revoked_at")
    listing.set_defaults(func=_list)
    revoke = actions.add_parser("revoke", help="revoke a user's token, at once")
    revoke.add_argument("name", help="the user whose token stops working")
    revoke.set_defaults(func=_revoke)


def _add(args: argparse.Namespace) -> int:
    token = Users().add(args.name, args.role)
    print(f"added {args.name} ({args.role}); their token, shown only now:\n{token}")
    return 0


def _list(args: argparse.Namespace) -> int:
    users = Users().list()
    if args.json:
        print(json.dumps([asdict(u) for u in users], indent=2))
    else:
        for u in users:
            print(f"{u.name}\t{u.role}\tadded {u.created_at}" + (f"\trevoked {u.revoked_at}" if u.revoked_at else ""))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    print(f"revoked {Users().revoke(args.name).name}: their token no longer works")
    return 0
