"""The node's identity: the mnemonic and the keys derived from it.

Everything the node keeps on a VSS server is named and encrypted by one secp256k1 key,
the BIP-32 private key at `m/535'/1'` of the mnemonic's BIP-39 seed (empty
passphrase). Its compressed public key, in hex, is the KV stream's store id; the
wallet stream's store id appends `_rgb`. The same mnemonic therefore finds and opens
the same backups on any machine (docs/FORMAT.md, "Identity").

Secrets never appear in a repr, an error message or a log line: `NodeKeys` hides
its signing key, and `InvalidMnemonic` names word positions, never words.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import coincurve
from bip32 import BIP32
from mnemonic import Mnemonic

from vss.wording import counted, plural

DERIVATION_PATH = "m/535'/1'"
WALLET_STORE_SUFFIX = "_rgb"
_VALID_WORD_COUNTS = (12, 15, 18, 21, 24)
_GENERATED_STRENGTH_BITS = 256  # 24 words

_english = Mnemonic("english")
_english_words = frozenset(_english.wordlist)


class InvalidMnemonic(ValueError):
    """The words are not a valid BIP-39 English mnemonic (count, word list or checksum)."""


def generate_mnemonic() -> str:
    """Return a fresh 24-word BIP-39 English mnemonic from the OS's secure RNG."""
    return _english.generate(strength=_GENERATED_STRENGTH_BITS)


def validate_mnemonic(words: str) -> str:
    """Check a BIP-39 English mnemonic and return it normalized.

    Normalized means NFKD, lower case, words separated by single spaces, so that
    extra whitespace or capitals typed by an operator give the same seed. Raises
    InvalidMnemonic naming what is wrong (word count, the position of an unknown word,
    or a failed checksum) without repeating any word.
    """
    if not isinstance(words, str):
        raise InvalidMnemonic("mnemonic must be a string of words")
    parts = unicodedata.normalize("NFKD", words).lower().split()
    if len(parts) not in _VALID_WORD_COUNTS:
        raise InvalidMnemonic(
            f"mnemonic has {counted(len(parts), 'word')}; a BIP-39 mnemonic has 12, 15, 18, 21 or 24"
        )
    unknown = [str(i + 1) for i, word in enumerate(parts) if word not in _english_words]
    if unknown:
        raise InvalidMnemonic(
            f"mnemonic {plural(len(unknown), 'word')} at {plural(len(unknown), 'position')} {', '.join(unknown)} "
            f"not in the BIP-39 English word list"
        )
    normalized = " ".join(parts)
    if not _english.check(normalized):
        raise InvalidMnemonic("mnemonic checksum does not match: a word is mistyped or missing")
    return normalized


@dataclass(frozen=True)
class NodeKeys:
    """The keys derived from a mnemonic; held in memory only while the node is unlocked."""

    signing_key: bytes = field(repr=False)
    pubkey_hex: str
    fingerprint: str

    @property
    def kv_store_id(self) -> str:
        """The VSS store id of the KV stream: the compressed public key in hex."""
        return self.pubkey_hex

    @property
    def wallet_store_id(self) -> str:
        """The VSS store id of the wallet stream."""
        return self.pubkey_hex + WALLET_STORE_SUFFIX

    def __repr__(self) -> str:
        return f"NodeKeys(pubkey_hex={self.pubkey_hex!r}, fingerprint={self.fingerprint!r})"

    __str__ = __repr__


def derive_keys(mnemonic: str) -> NodeKeys:
    """Derive the node's keys from a mnemonic (validated and normalized first).

    Raises InvalidMnemonic when the words are not a valid mnemonic.
    """
    normalized = validate_mnemonic(mnemonic)
    seed = Mnemonic.to_seed(normalized, passphrase="")
    master = BIP32.from_seed(seed)
    signing_key = master.get_privkey_from_path(DERIVATION_PATH)
    pubkey = coincurve.PrivateKey(signing_key).public_key.format(compressed=True)
    return NodeKeys(
        signing_key=signing_key,
        pubkey_hex=pubkey.hex(),
        fingerprint=master.get_fingerprint().hex(),
    )
