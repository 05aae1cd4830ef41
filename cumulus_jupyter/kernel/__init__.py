"""The Cumulus GPU kernel: a local proxy that relays a Jupyter front end to a remote kernel.

``python -m cumulus_jupyter.kernel -f CONNECTION_FILE`` binds the five ZMQ channels the front end
expects and relays every message to a kernel on the gateway (through `RemoteKernel`'s
WebSocket), re-signing on the way back with the local session key. Messages travel as their raw
JSON parts: nothing is decoded but the headers needed for routing.

It answers ``kernel_info_request`` at once, even while the partition is being allocated or
queued, and shows that progress in the first cell's output. A cell that is ``%cumulus extend
DURATION`` it answers itself: more time for the partition, at once, even while a cell runs.
Interrupt and restart go to the gateway's REST API (same partition); shutdown releases the
partition. When the partition expires or the gateway cannot be reached, cells say why in the
notebook, and "restart kernel" asks for a new partition.

Its modules, each importing only those above it:

- `routing`: who asked what, outstanding executes, the busy/idle filter, the proxy's own
  requests (pure bookkeeping);
- `sockets`: the local ZMQ side and the messages the proxy sends itself;
- `progress`: the progress lines shown in the cells waiting for the kernel;
- `commands`: the ``%cumulus`` line a cell may hold (``%cumulus extend 30m``), which the proxy
  answers itself;
- `link`: the remote kernel on the gateway (start, adopt, reconnect, hand over), the proxy's
  own requests to it, file sync;
- `proxy`: `ProxyKernel`, which ties them together;
- `launch`: `main`, the command line and the connection file.
"""

from __future__ import annotations

from cumulus_jupyter.kernel.launch import main
from cumulus_jupyter.kernel.proxy import ProxyKernel

__all__ = ["ProxyKernel", "main"]
