"""A real SMTP server on 127.0.0.1 for the alert tests (aiosmtpd), with AUTH, stopped when the block ends."""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support import free_port

LOGIN, PASSWORD = "mailer", "smtp-pw-alert-2112"
FROM = "airflow@example.com"


@dataclass
class Inbox:
    """What the server accepted: (envelope recipients, raw message) per mail; ``port`` it listens on."""

    port: int = 0
    mails: list[tuple[list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 OK"

    def connection(self) -> dict[str, Any]:
        """An Airflow ``smtp`` connection (JSON form) that reaches this server with its login."""
        return {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": self.port,
            "login": LOGIN,
            "password": PASSWORD,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": FROM, "timeout": 10},
        }


def html_of(raw: bytes) -> tuple[email.message.EmailMessage, str]:
    """A received mail and its HTML body."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    body = message.get_body(("html",))
    assert body is not None
    return message, str(body.get_content())


@contextlib.contextmanager
def smtp_server() -> Iterator[Inbox]:
    """Accepts mail only after AUTH with LOGIN/PASSWORD (no TLS: loopback only)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        good = (LOGIN.encode(), PASSWORD.encode())
        return AuthResult(success=isinstance(data, LoginPassword) and (data.login, data.password) == good)

    inbox = Inbox(port=free_port())
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=inbox.port,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()
