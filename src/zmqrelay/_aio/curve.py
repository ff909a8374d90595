"""CURVE security: key pairs and key files, the keys each side allows, and the ZAP handler.

Keys are in ZeroMQ's certificate format (``zmq.auth.create_certificates``): ``NAME.key`` holds
a public key, ``NAME.key_secret`` the pair. A broker's clients and workers are authenticated
apart: its frontend and its backend each have a ZAP domain of their own, and each domain a
:class:`Keyring` of allowed keys (or none, to take any CURVE peer: encryption without
authentication). ZAP itself is pyzmq's ``ThreadAuthenticator``, one per context (libzmq allows
one ZAP handler per context), shared by the brokers of that context, which each add their
domains to it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from zmqrelay._aio import sockets
from zmqrelay._core.security import SecurityStatistics
from zmqrelay._core.throttle import Throttle
from zmqrelay.errors import KeyFileError

Side = Literal["clients", "workers"]


def _checked(key: bytes, where: str) -> bytes:
    """``key`` if it is a z85-encoded CURVE key (40 characters, 32 bytes)."""
    try:
        if len(key) == 40 and len(z85.decode(key)) == 32:
            return key
    except (ValueError, KeyError, TypeError):
        pass
    raise KeyFileError(f"{where}: not a CURVE key (40 characters of Z85): {key[:48]!r}")


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    return _checked(public, str(path)), None if secret is None else _checked(secret, str(path))


@dataclass(frozen=True)
class CurveKeyPair:
    """A CURVE key pair, Z85-encoded, as ZeroMQ's certificate files hold it."""

    public: bytes
    secret: bytes = b""
    """Empty for a public key alone (what a peer is told of the broker)."""

    def __repr__(self) -> str:  # never the secret
        return f"CurveKeyPair(public={self.public!r})"

    @classmethod
    def generate(cls) -> CurveKeyPair:
        """A new key pair."""
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @classmethod
    def load(cls, path: str | Path) -> CurveKeyPair:
        """Read a certificate file: ``NAME.key_secret`` for a pair, ``NAME.key`` for a key.

        Raises:
            KeyFileError: the file is missing or holds no valid key.
        """
        public, secret = _read_certificate(Path(path))
        return cls(public, secret or b"")

    @classmethod
    def create(cls, directory: str | Path, name: str) -> tuple[Path, Path]:
        """Write a new pair as ``NAME.key`` and ``NAME.key_secret`` in ``directory``.

        The secret file is readable by its owner only from the moment it exists. Returns the
        two paths: the public file, to hand out, and the secret one, to keep.

        Raises:
            KeyFileError: ``name`` is not a plain file name, or the pair (or half of it)
                exists already: keys are never overwritten.
            OSError: the files cannot be written.
        """
        if not name or name.startswith(".") or Path(name).name != name:
            raise KeyFileError(f"{name!r}: a key's name is a file name, without a directory")
        folder = Path(directory)
        for path in (folder / f"{name}.key", folder / f"{name}.key_secret"):
            if path.exists() or path.is_symlink():
                raise KeyFileError(f"{path} exists: keys are never overwritten")
        folder.mkdir(parents=True, exist_ok=True)
        mask = os.umask(0o077)  # process-wide, for as long as two small files take to write
        try:
            public, secret = zmq.auth.create_certificates(folder, name)
        finally:
            os.umask(mask)
        Path(public).chmod(0o666 & ~mask)
        return Path(public), Path(secret)


def key_pair(source: CurveKeyPair | str | Path, what: str) -> CurveKeyPair:
    """A key pair given as itself or as the path of its ``.key_secret`` file.

    Raises:
        KeyFileError: the file holds no secret key.
    """
    pair = source if isinstance(source, CurveKeyPair) else CurveKeyPair.load(source)
    if not pair.secret:
        raise KeyFileError(f"{what}: {source} holds a public key only; give a .key_secret file")
    return pair


def public_key(source: CurveKeyPair | bytes | str | Path) -> bytes:
    """A public key given as Z85 bytes, a key pair, or the path of a certificate file.

    Raises:
        KeyFileError: it is none of these.
    """
    if isinstance(source, CurveKeyPair):
        return source.public
    if isinstance(source, bytes):
        return _checked(source, "the broker's public key")
    return CurveKeyPair.load(source).public


def client_options(
    keys: CurveKeyPair | str | Path, server_key: CurveKeyPair | bytes | str | Path
) -> list[tuple[int, int | bytes]]:
    """The socket options of a CURVE client (a zmqrelay client or worker) of a broker."""
    pair = key_pair(keys, "curve_keys")
    return [
        (zmq.CURVE_SERVERKEY, public_key(server_key)),
        (zmq.CURVE_PUBLICKEY, pair.public),
        (zmq.CURVE_SECRETKEY, pair.secret),
    ]


class Keyring:
    """The public keys a side allows, by name (the certificate file's name without ``.key``)."""

    def __init__(self, keys: Mapping[str, bytes], source: str = "") -> None:
        self.source = source
        self._names = {key: name for name, key in keys.items()}

    def __len__(self) -> int:
        return len(self._names)

    def name_of(self, key: bytes) -> str | None:
        """The name of the Z85 ``key``, or ``None`` if it is not allowed."""
        return self._names.get(key)

    @classmethod
    def from_directory(cls, directory: str | Path) -> Keyring:
        """Every ``*.key`` file of ``directory`` (``*.key_secret`` files are not read).

        Raises:
            KeyFileError: the directory is missing, or a file in it holds no valid key.
        """
        folder = Path(directory)
        if not folder.is_dir():
            raise KeyFileError(f"{folder}: not a directory of *.key files")
        keys = {path.stem: _read_certificate(path)[0] for path in sorted(folder.glob("*.key"))}
        return cls(keys, str(folder))


class Guard:
    """A broker's CURVE: its key pair, the keys each side allows, and what was refused.

    ``client_keys`` and ``worker_keys`` are directories of ``*.key`` files; ``None`` lets any
    CURVE peer in on that side. :meth:`reload` reads them again.
    """

    def __init__(
        self,
        secret_key: CurveKeyPair | str | Path,
        client_keys: str | Path | None,
        worker_keys: str | Path | None,
        handshake_timeout: float,
    ) -> None:
        self.pair = key_pair(secret_key, "curve_secret_key")
        self._directories: dict[Side, Path | None] = {
            "clients": None if client_keys is None else Path(client_keys),
            "workers": None if worker_keys is None else Path(worker_keys),
        }
        self.keyrings: dict[Side, Keyring | None] = self._load()
        self.handshake_timeout = handshake_timeout
        name = uuid.uuid4().hex[:12]
        self.domains: dict[Side, str] = {
            "clients": f"zmqrelay-clients-{name}",
            "workers": f"zmqrelay-workers-{name}",
        }
        self._sides = {domain: side for side, domain in self.domains.items()}
        self._lock = threading.Lock()  # the ZAP handler counts in its thread
        self._refused: dict[Side, int] = {"clients": 0, "workers": 0}
        self.last_refused: dict[Side, bytes] = {}
        """The last key refused on each side (for the log)."""
        self.handshakes_failed = 0

    def _load(self) -> dict[Side, Keyring | None]:
        return {
            side: None if folder is None else Keyring.from_directory(folder)
            for side, folder in self._directories.items()
        }

    def reload(self) -> None:
        """Read the key directories again; peers already connected stay connected.

        Raises:
            KeyFileError: a directory or a file cannot be read; the keys allowed stay as they
                were.
        """
        self.keyrings = self._load()

    def describe(self) -> Iterator[str]:
        """What each side allows, for the log."""
        for side, keyring in self.keyrings.items():
            if keyring is None:
                yield f"{side}: any CURVE key (encrypted, not authenticated)"
            else:
                yield f"{side}: {len(keyring)} keys from {keyring.source}"

    def key_counts(self) -> dict[str, int | None]:
        """The keys each side allows, for the log's fields (``None``: any key)."""
        return {
            f"{side[:-1]}_keys": None if keyring is None else len(keyring)
            for side, keyring in self.keyrings.items()
        }

    def server_options(self, side: Side) -> list[tuple[int, int | bytes]]:
        """The socket options of the broker's socket for ``side``."""
        return [
            (zmq.CURVE_SERVER, 1),
            (zmq.CURVE_SECRETKEY, self.pair.secret),
            (zmq.ZAP_DOMAIN, self.domains[side].encode()),
            (zmq.HANDSHAKE_IVL, max(1, round(self.handshake_timeout * 1000))),
        ]

    def namer(self, side: Side) -> Callable[[str], str | None]:
        """A function from a peer's User-Id (its Z85 key) to its key's name, if allowed now.

        On a side that takes any key, the name is the key itself.
        """

        def name(user_id: str) -> str | None:
            keyring = self.keyrings[side]
            return user_id if keyring is None else keyring.name_of(user_id.encode())

        return name

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether this Z85 key may in: ZAP's question, asked in the authenticator's thread."""
        side = self._sides.get(domain)
        if side is None:
            return False
        keyring = self.keyrings[side]
        if keyring is None or keyring.name_of(key) is not None:
            return True
        with self._lock:  # logged by the broker, throttled (see zmqrelay._aio.droplog)
            self._refused[side] += 1
            self.last_refused[side] = key
        return False

    def drops(self) -> dict[str, int]:
        """What was refused so far, by kind: the counters a throttled log reads."""
        return self.statistics()._asdict()

    def statistics(self) -> SecurityStatistics:
        """What was refused so far."""
        with self._lock:
            return SecurityStatistics(
                clients_refused=self._refused["clients"],
                workers_refused=self._refused["workers"],
                handshakes_failed=self.handshakes_failed,
            )


_ZAP_LOG_INTERVAL = 10.0
"""Seconds between two lines of one kind from pyzmq's ZAP handler."""


class _Throttled(logging.Filter):
    """Lets each kind of line (its format) through at most once per interval, with a count.

    pyzmq's ZAP handler logs every handshake (at DEBUG): peers must not be able to flood the
    log through it.
    """

    def __init__(self, interval: float) -> None:
        super().__init__()
        self._throttle = Throttle(interval)
        self._lock = threading.Lock()  # the ZAP handler logs in its thread

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the line goes out; when it does, it says how many like it did not."""
        with self._lock:
            line = self._throttle.add(str(record.msg), time.monotonic())
        if line is None:
            return False
        if line.occurrences > 1:
            record.msg = f"{record.msg} (and {line.occurrences - 1} more like it since the last)"
            record.__dict__["count"] = line.occurrences
        return True


_zap_log = logging.getLogger("zmqrelay.zap")
_zap_log.addFilter(_Throttled(_ZAP_LOG_INTERVAL))


class _Shared:
    """A context's ZAP handler and the guards that use it."""

    def __init__(self, context: zmq.asyncio.Context) -> None:
        self.authenticator = ThreadAuthenticator(context, log=_zap_log)
        self.authenticator.start()
        self.users = 0


_shared: weakref.WeakKeyDictionary[zmq.asyncio.Context, _Shared] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def attach(context: zmq.asyncio.Context, guard: Guard) -> None:
    """Have the context's ZAP handler (started now if need be) answer for ``guard``'s domains.

    Raises:
        zmq.ZMQError: another ZAP handler, not zmqrelay's, is bound in this context.
    """
    with _shared_lock:
        shared = _shared.get(context)
        if shared is None:
            shared = _shared[context] = _Shared(context)
        shared.users += 1
        for domain in guard.domains.values():
            shared.authenticator.configure_curve_callback(domain, guard)


def detach(context: zmq.asyncio.Context, guard: Guard) -> None:
    """Stop answering for ``guard``; the last guard of a context stops its ZAP handler."""
    with _shared_lock:
        shared = _shared.get(context)
        if shared is None:
            return
        for domain in guard.domains.values():
            shared.authenticator.credentials_providers.pop(domain, None)
        shared.users -= 1
        if shared.users == 0:
            shared.authenticator.stop()
            del _shared[context]


_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
"""Handshakes that failed before ZAP was asked (a refused key is counted by ZAP's answer)."""


@contextlib.contextmanager
def watching(
    guard: Guard | None, *socks: zmq.asyncio.Socket
) -> Iterator[list[Callable[[], Coroutine[Any, Any, None]]]]:
    """Tasks that count failed handshakes on ``socks``, for ``guard``; none without one.

    The monitors are set up here, before the sockets go to another thread (libzmq's proxy).
    """
    if guard is None:
        yield []
        return
    monitors = [sockets.monitor(sock, _FAILED) for sock in socks]

    async def count(monitor: zmq.asyncio.Socket) -> None:
        while True:
            await monitor.recv_multipart()
            guard.handshakes_failed += 1

    try:
        yield [functools.partial(count, monitor) for monitor in monitors]
    finally:
        for sock, monitor in zip(socks, monitors, strict=True):
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            monitor.close(linger=0)
