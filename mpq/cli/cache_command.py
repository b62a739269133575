"""`mpq cache info` and `mpq cache clear`: what the on-disk cache holds, and emptying it (mpq's entries only)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from mpq.cache import Cache, default_cache_dir, max_bytes_from_environment


def add_cache_parser(sub) -> None:
    """`mpq cache info|clear [--cache-dir DIR] [--json]` under the subcommands `sub`."""
    p = sub.add_parser("cache", help="show what the cache holds (info) or delete mpq's cache files (clear)")
    p.add_argument(
        "action",
        choices=("info", "clear"),
        help=(
            "info: folder, entries, bytes, oldest and newest; clear: delete mpq's entries and say how many bytes "
            "were freed"
        ),
    )
    p.add_argument("--cache-dir", help="the cache folder (default ~/.cache/mpq or $MPQ_CACHE_DIR)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines of text")


def _when(mtime: float | None) -> str | None:
    return None if mtime is None else datetime.fromtimestamp(mtime).astimezone().isoformat(timespec="seconds")


def cache_info(cache: Cache) -> dict:
    files = cache.files()
    kinds: dict[str, int] = {}
    for f in files:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    return {
        "folder": str(cache.folder),
        "entries": len(files),
        "bytes": sum(f.size for f in files),
        "max_bytes": cache.max_bytes,
        "oldest": _when(files[0].mtime if files else None),
        "newest": _when(files[-1].mtime if files else None),
        "kinds": dict(sorted(kinds.items())),
    }


def run_cache(args: argparse.Namespace) -> int:
    cache = Cache(args.cache_dir or default_cache_dir(), max_bytes_from_environment())
    if args.action == "clear":
        deleted = cache.clear()
        result = {
            "folder": str(cache.folder),
            "deleted_entries": len(deleted),
            "freed_bytes": sum(f.size for f in deleted),
        }
        print(
            json.dumps(result)
            if args.json
            else (
                f"deleted {result['deleted_entries']} cache entries from {cache.folder}, freed "
                f"{result['freed_bytes']:,} bytes"
            )
        )
        return 0
    info = cache_info(cache)
    if args.json:
        print(json.dumps(info))
        return 0
    cap = "no cap" if not info["max_bytes"] else f"cap {info['max_bytes']:,} bytes"
    print(f"folder:  {info['folder']}")
    print(
        f"entries: {info['entries']}"
        + (" (" + ", ".join(f"{k} {n}" for k, n in info["kinds"].items()) + ")" if info["kinds"] else "")
    )
    print(f"size:    {info['bytes']:,} bytes, {cap}")
    print(f"oldest:  {info['oldest'] or '-'}")
    print(f"newest:  {info['newest'] or '-'}")
    return 0
