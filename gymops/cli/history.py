"""`gymops setup` and `gymops history`: the profile's database, history tables and Feast registry."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone


def cmd_setup(settings, args) -> int:
    from gymops.db import engine_for
    from gymops.history import feature_store

    feature_store.apply(settings, quiet=False)
    engine_for(settings)
    print(f"profile {settings.profile}: feature repo applied, history tables and database ready under {settings.home}")
    return 0


def cmd_history(settings, args) -> int:
    from gymops.history import tables as history

    since = datetime.now(timezone.utc) - timedelta(days=args.days)
    out = {"profile": settings.profile, "since": since.isoformat()}
    for table in history.TABLES:
        out[table] = {"rows": history.history_for(settings, table).read().num_rows}
    out["laundry_corrections_since"] = history.corrections_since(settings, "laundry", since)
    print(json.dumps(out, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("setup", help="create the database and history tables, run `feast apply` for the profile")
    p.set_defaults(handler=cmd_setup)

    p = sub.add_parser("history", help="rows in the training history, corrections in the last days")
    p.add_argument("--days", type=float, default=7.0)
    p.set_defaults(handler=cmd_history)
