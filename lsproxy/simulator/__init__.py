"""A local Adobe Analytics Live Stream look-alike (``lsproxy simulate``).

Serves the upstream protocol over real sockets (h11 on trio): gzip, chunked,
CRLF-separated JSON hits, the documented status codes, connection slots that
linger after a disconnect, resume/backfill, redirects, and ``/_sim/*`` controls
for tests. Hits are deterministic: ``hits.seq_of(record)`` recovers a hit's
sequence number in its stream.
"""

from lsproxy.simulator.cli import add_arguments, run, settings_from_args
from lsproxy.simulator.hits import seq_of
from lsproxy.simulator.server import Simulator, SimulatorBindError
from lsproxy.simulator.settings import SimSettings, SimStream

__all__ = [
    "SimSettings",
    "SimStream",
    "Simulator",
    "SimulatorBindError",
    "add_arguments",
    "run",
    "seq_of",
    "settings_from_args",
]
