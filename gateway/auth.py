"""Per-user tokens on top of jupyter_server's token auth.

The gateway's own token (``--IdentityProvider.token``) is the operator's: it sees and acts on
every kernel. ``--CumulusIdentityProvider.user_tokens`` maps further tokens to user names; a
request made with one of those is that user, who can start kernels only as themselves
(``KERNEL_USERNAME`` is theirs) and can see, use and stop only their own kernels.
"""

from __future__ import annotations

import hmac

from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web
from traitlets import Dict, Unicode


class CumulusIdentityProvider(IdentityProvider):
    user_tokens = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="Per-user tokens, {token: username}: each user sees and uses only their kernels.",
    )

    async def get_user_token(self, handler: web.RequestHandler) -> User | None:
        presented = self.get_token(handler) or ""
        for token, name in self.user_tokens.items():
            if presented and hmac.compare_digest(presented.encode(), token.encode()):
                return User(username=name, name=name, display_name=name, initials=name[:2])
        return await super().get_user_token(handler)

    def scoped_name(self, user: User | None) -> str | None:
        """The user's name when their access is scoped to their own kernels; None for the
        operator (the gateway's own token)."""
        if user is None:
            return None
        return user.username if user.username in self.user_tokens.values() else None
