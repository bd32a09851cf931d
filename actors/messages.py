"""The messages the actors exchange, one union per inbox, and the one-shot reply.

Keys travel between actors as triples (primary, secondary, key); values never do once
committed: the replicator reads the newest committed value when it sends, so an older
value can never overtake a newer one, whatever path (live, retry, re-scan) a key took.

Inboxes and who sends to them:

    local-writer     WriterMessage     api (writes), replicator (clears), guard (versions,
                                       owe-all), auditor (owe-keys), session (flush)
    replicator       ReplicatorMessage local-writer (changed keys), retry-queue (retries),
                                       api (durability=remote)
    retry-queue      RetryMessage      replicator (deferred, succeeded, stopped),
                                       local-writer (rescan)
    ownership-guard  GuardMessage      replicator and wallet uploader (fenced puts)
    wallet-keeper    WalletMessage     api (changes, backup-now), guard (owe-wallet),
                                       auditor (check-remote), its own upload task
    auditor          AuditorMessage    api (verify)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from node.store import LocalChange, Triple
from vss.proto.vss_pb2 import KeyValue

T = TypeVar("T")


class Reply(Generic[T]):
    """A one-shot answer: the sender of a request awaits it, the actor fills it once.

    A waiter that gives up (a timeout) calls `abandon()`, so an actor holding the
    reply for later can drop it instead of keeping it forever.
    """

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._result: tuple[T] | None = None  # a tuple, so that a None answer is still an answer
        self._error: BaseException | None = None
        self.abandoned = False

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def set(self, value: T) -> None:
        if not self.done:
            self._result = (value,)
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self._error = error
            self._done.set()

    def abandon(self) -> None:
        self.abandoned = True

    async def wait(self) -> T:
        """The answer, or the error the actor failed the request with."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result[0]


class StoreKind(enum.Enum):
    """The two VSS stores of a node, each with its own fence token."""

    KV = "kv"
    WALLET = "wallet"


# -- local-writer ----------------------------------------------------------------------------


@dataclass
class WriteRequest:
    """api → local-writer: commit this change durably, then answer with its seq."""

    change: LocalChange
    reply: Reply[int] = field(default_factory=Reply)


@dataclass
class ClearMarkers:
    """replicator → local-writer: these (key, seq) reached the server, after which the
    KV store's global version is `store_version`; answered once recorded (before the
    replicator lets its next batch go)."""

    sent: list[tuple[Triple, int]]
    store_version: int
    reply: Reply[None] = field(default_factory=Reply)


@dataclass
class RecordStoreVersion:
    """guard → local-writer: the store's global version is now `version` (the wallet
    store's after each write, either store's after an acquire); answered once recorded
    (before the guard lets the next write of that store go)."""

    kind: StoreKind
    version: int
    reply: Reply[None] = field(default_factory=Reply)


@dataclass
class OweAll:
    """guard → local-writer: the server lost the store (or the operator accepted a
    divergence): mark every local key as owed, then have the retry-queue re-read."""


@dataclass
class OweKeys:
    """auditor → local-writer: these local keys are missing on the server: owe them."""

    triples: list[Triple]


@dataclass
class Flush:
    """session → local-writer: answer once everything queued before this is committed."""

    reply: Reply[None] = field(default_factory=Reply)


WriterMessage = WriteRequest | ClearMarkers | RecordStoreVersion | OweAll | OweKeys | Flush


# -- replicator -------------------------------------------------------------------------------


@dataclass
class KeysChanged:
    """local-writer → replicator: these keys were committed and are owed to the server."""

    triples: list[Triple]


@dataclass
class RetryBatch:
    """retry-queue → replicator: try these owed keys again."""

    triples: list[Triple]


@dataclass
class SendNow:
    """api → replicator: answer once the change of `triple` committed at `seq` (or a
    newer one) is on the server; send it without waiting for company."""

    triple: Triple
    seq: int
    reply: Reply[None] = field(default_factory=Reply)


ReplicatorMessage = KeysChanged | RetryBatch | SendNow


# -- retry-queue ---------------------------------------------------------------------------------


@dataclass
class Deferred:
    """replicator → retry-queue: keys not (yet) on the server. `failed`: a send failed."""

    triples: list[Triple]
    failed: bool
    error: str = ""


@dataclass
class Succeeded:
    """replicator → retry-queue: a batch landed; the server is reachable, drain."""

    keys: int


@dataclass
class Rescan:
    """local-writer → retry-queue: a notification was dropped, or keys became owed in
    bulk; re-read the markers."""


@dataclass
class ReplicationStopped:
    """replicator → retry-queue: the store is fenced or diverged; stop offering keys."""


RetryMessage = Deferred | Succeeded | Rescan | ReplicationStopped


# -- ownership-guard --------------------------------------------------------------------------------


@dataclass
class FencedPut:
    """replicator or wallet uploader → guard: one putObjects on `kind`'s store under
    the fence. Answered with the store's global version after it, or failed with
    FenceLost, DivergenceFound or the VssError the server answered."""

    kind: StoreKind
    items: Sequence[KeyValue]
    deletes: Sequence[KeyValue] = ()
    reply: Reply[int] = field(default_factory=Reply)


GuardMessage = FencedPut


# -- wallet-keeper ------------------------------------------------------------------------------------


@dataclass
class WalletChange:
    """api → wallet-keeper: write `data` at `path` (None deletes it); answered once durable."""

    path: str
    data: bytes | None
    reply: Reply[None] = field(default_factory=Reply)


@dataclass
class BackupNow:
    """api → wallet-keeper: answer with the manifest version of a backup holding every
    change made before this request. `replace_unreadable`: the operator's word to
    upload over a remote backup this node could not read."""

    replace_unreadable: bool = False
    reply: Reply[int] = field(default_factory=Reply)


@dataclass
class OweWallet:
    """guard → wallet-keeper: the server lost the wallet store: upload the wallet again."""


@dataclass
class CheckRemote:
    """auditor → wallet-keeper: read the server's manifest again (is the backup there?)."""


@dataclass
class UploadDone:
    """wallet-keeper's upload task → its loop: round `number`, built at change `seq`."""

    number: int
    seq: int
    version: int | None = None
    error: str | None = None
    stopped: BaseException | None = None  # FenceLost or DivergenceFound


@dataclass
class RemoteSeen:
    """wallet-keeper's check task → its loop: the server's manifest version (None: no
    backup), or why it could not be read."""

    version: int | None = None
    error: str | None = None


WalletMessage = WalletChange | BackupNow | OweWallet | CheckRemote | UploadDone | RemoteSeen


# -- auditor ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditReport:
    """The outcome of one comparison (the full fields only for a full verify); the body
    of `POST /vssverify`."""

    keys_checked: int  # local keys compared (owed ones left out)
    missing_on_server: int  # local keys the server lacks: owed again
    extra_on_server: int  # keys only the server has: reported, never deleted
    pending: int  # keys still owed, so expected to differ
    mismatched: int | None = None  # full verify: keys whose remote value differs from the local one
    wallet_restorable: bool | None = None  # full verify: the wallet backup decrypts and unzips (no backup: the wallet is empty)
    took_s: float = 0.0


@dataclass
class AuditNow:
    """node → auditor: compare now; `full` fetches and decrypts every value too."""

    full: bool
    reply: Reply[AuditReport] = field(default_factory=Reply)


AuditorMessage = AuditNow
