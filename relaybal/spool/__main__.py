"""Read-only look at a spool: ``python -m relaybal.spool DIR [QUEUEID…]``.

Lists the queued messages (queue ID, arrival, size, sender, each recipient's
state), or prints the envelope and body of the given ones. It changes
nothing, so it is safe while the daemon runs (it sees what is durable).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from relaybal.spool.disk import BODIES_DIR, LOG_DIR, read_at, segment_name
from relaybal.spool.recovery import recover


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relaybal.spool", description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="the spool directory (STATE_DIR/spool)")
    parser.add_argument("queue_ids", nargs="*", help="show these messages' envelopes and bodies")
    args = parser.parse_args(argv)
    recovered = recover(args.directory, repair=False)
    out = sys.stdout
    if not args.queue_ids:
        for message, _ in recovered.messages.values():
            env = message.envelope
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(env.received_at))
            pairs = zip(env.recipients, message.recipients, strict=True)
            states = ", ".join(f"<{r}> {s.status.value}/{s.attempts}" for r, s in pairs)
            out.write(f"{message.queue_id}  {when}  {message.size:>9}  <{env.sender}>  {states}\n")
        report = recovered.report
        out.write(f"-- {report.messages} messages in {len(report.segments)} segments\n")
        return 0
    status = 0
    for queue_id in args.queue_ids:
        entry = recovered.messages.get(queue_id)
        if entry is None:
            sys.stderr.write(f"{queue_id}: not in the queue\n")
            status = 1
            continue
        message, location = entry
        env = message.envelope
        out.write(f"queue_id: {queue_id}\nsender: <{env.sender}>\nclient: {env.client}  helo: {env.helo}\n")
        for rcpt, state in zip(env.recipients, message.recipients, strict=True):
            out.write(f"recipient: <{rcpt}> {state.status.value} attempts={state.attempts} "
                      f"next={state.next_attempt} reply={state.reply}\n")  # fmt: skip
        if message.body_file is not None:
            body = read_at(os.path.join(args.directory, BODIES_DIR, message.body_file), 0, message.size)
        else:
            path = os.path.join(args.directory, LOG_DIR, segment_name(location.segment))
            body = read_at(path, location.body_offset, message.size)
        out.write("\n")
        out.flush()
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
