"""The names of the node's bookkeeping rows in the local database (`settings` table).

One place for all of them, so that no two modules invent the same name twice. None of
these rows is visible through `/kv` or replicated as data.
"""

from __future__ import annotations

SEALED_MNEMONIC = "sealed_mnemonic"  # the vault blob written by init
NETWORK = "network"  # recorded at init; the data dir refuses any other
PUBKEY = "pubkey_hex"  # the KV store id, readable while locked
FINGERPRINT = "fingerprint"  # the wallet's, readable while locked
INSTANCE_ID = "instance_id"  # what this data dir writes into the ownership fence

# The VSS URL the local KV state (or the wallet directory) is known to be owed to,
# or was restored from. Absent or different at unlock: restore if empty, else owe it all.
KV_SYNCED_URL = "kv_synced_url"
WALLET_SYNCED_URL = "wallet_synced_url"

# Each store's global_version as this node last saw it (decimal text), to tell at the
# next acquire whether another node wrote the store meanwhile.
KV_STORE_VERSION = "kv_store_version"
WALLET_STORE_VERSION = "wallet_store_version"
