"""The Cumulus gateway: remote kernels in Chronos partitions, Kernel-Gateway compatible.

Built on jupyter_server in its own issue; the package exists now so the distribution's layout
(``cumulus_jupyter``, ``gateway``, ``chronos``) is fixed from the start.
"""

import sys


def _without_rfc3987_syntax() -> None:
    """Keep ``rfc3987_syntax`` from loading in the gateway: jsonschema (imported by
    jupyter_server through jupyter_events) imports it when it is installed, and it compiles
    38 lark grammars at import, 2.3 s of CPU on every gateway start (3.4 s -> 1.0 s for
    ``import gateway.app`` here). Only the ``iri`` and ``iri-reference`` format checks need
    it, and no schema the gateway validates uses those formats. A process that has already
    loaded jsonschema is left as it is."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


_without_rfc3987_syntax()
