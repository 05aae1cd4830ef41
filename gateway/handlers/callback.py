"""``POST /api/cumulus/kernels/{kernel_id}/callback``: a kernel in a container reports its
ports and key (`cumulus_jupyter.protocol.callback`) to the runtime waiting on it (`Callbacks`).

The endpoint does not take the gateway's user token (the container never sees it): the
per-kernel, single-use token in ``Authorization: token ...`` is its credential. A refusal is
logged as a warning with the caller's address.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import allow_unauthenticated

from cumulus_jupyter.errors import InvalidArgument, PermissionDenied
from gateway.handlers.base import CumulusHandler, parse_json


class CallbackHandler(CumulusHandler):
    def check_xsrf_cookie(self) -> None:
        """No cookies here: the per-kernel token in the header is the credential."""

    @allow_unauthenticated
    async def post(self, kernel_id: str) -> None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        try:
            payload = parse_json(self.request.body or b"{}")
        except InvalidArgument as exc:
            raise InvalidArgument(f"Bad callback: {exc}") from exc
        try:
            if scheme.lower() != "token" or not token:
                raise PermissionDenied(f"callback for kernel {kernel_id} without a token")
            self.services.callbacks.accept(kernel_id, token.strip(), payload)
        except InvalidArgument as exc:
            raise InvalidArgument(f"Bad callback: {exc}") from exc
        except PermissionDenied as exc:
            self.log.warning(
                "refused kernel callback from %s: %s", self.request.remote_ip, exc,
                extra={"event": "callback_refused", "kernel_id": kernel_id},
            )  # fmt: skip
            raise
        self.log.info(
            "kernel %s called back from %s", kernel_id, self.request.remote_ip,
            extra={"event": "kernel_called_back", "kernel_id": kernel_id},
        )  # fmt: skip
        self.set_status(204)
        self.finish()


default_handlers = [  # loaded by jupyter_server as an extra service
    (r"/api/cumulus/kernels/(?P<kernel_id>[\w-]+)/callback", CallbackHandler),
]
