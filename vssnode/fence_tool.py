"""`vssnode clear-fence`: the ownership fence of a store, shown and cleared without a node.

For when the old node's machine is gone and `POST /vssclearfence` has no node to run
on: the mnemonic names the store (and signs the requests), the fence says whose it is.
Clearing is the same unconditional delete the node's own route does; the next node
to unlock takes the store over.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio

from actors.ownership_guard import clear_fence, read_fence
from node import config as node_config
from node.keys import InvalidMnemonic, derive_keys
from vss.client import VssClient, headers_auth
from vss.errors import VssError
from vssnode.console import fail

COMMAND = "vssnode clear-fence"


def clear_fence_offline(args: argparse.Namespace) -> int:
    try:
        node_config.validate_vss_url(args.vss_url, allow_http=args.vss_allow_http)
        words = Path(args.mnemonic_file).read_text(encoding="utf-8")
        keys = derive_keys(words)
        fixed = dict(node_config.split_header(text) for text in args.vss_header or ())
        header_file = Path(args.vss_header_file) if args.vss_header_file else None
        auth = headers_auth(keys.signing_key, fixed, header_file)
        client = VssClient(args.vss_url, auth, ca_file=args.vss_ca_file)
    except (node_config.ConfigError, InvalidMnemonic, ValueError) as exc:
        return fail(COMMAND, exc, 2)
    except OSError as exc:
        return fail(COMMAND, node_config.ConfigError(f"cannot read {args.mnemonic_file}: {exc.strerror}"), 2)

    async def show_and_clear() -> int:
        async with client:
            owner, version = await read_fence(client, keys.kv_store_id)
            if owner is None:
                print(f"the VSS store {keys.kv_store_id} has no ownership fence: nothing to clear")
                return 0
            print(f"the VSS store {keys.kv_store_id} is fenced by node instance {owner} (fence version {version})")
            if not args.yes:
                print("not cleared: run again with --yes once that node is gone for good")
                return 1
            await clear_fence(client, keys.kv_store_id)
            print("fence cleared: the next node to unlock with this mnemonic takes the store over")
            return 0

    try:
        return anyio.run(show_and_clear)
    except VssError as exc:
        return fail(COMMAND, exc, 1)
