"""kube-apiserver's audit log on the test bed: which requests a user made.

The test bed writes it in batches of at most one second (`--audit-log-batch-max-wait=1s`), so
each read first waits that long: what a request did is in the log by then.
"""

from __future__ import annotations

import json
import time
from typing import Any

from testbed import Testbed

FLUSH_SECONDS = 1.5


def audit_offset(bed: Testbed) -> int:
    """The log's length in lines now: pass it as `since` to read only later requests."""
    time.sleep(FLUSH_SECONDS)
    return len(bed.audit_log.read_text().splitlines()) if bed.audit_log.exists() else 0


def audited(bed: Testbed, user: str, since: int = 0) -> list[dict[str, Any]]:
    """`user`'s requests since line `since`, one event per request (its last stage seen)."""
    time.sleep(FLUSH_SECONDS)
    if not bed.audit_log.exists():
        return []
    seen: dict[str, dict[str, Any]] = {}
    for line in bed.audit_log.read_text().splitlines()[since:]:
        event = json.loads(line)
        if event["user"]["username"] != user:
            continue
        if event["auditID"] not in seen or event["stage"] == "ResponseComplete":
            seen[event["auditID"]] = event
    return list(seen.values())
