"""Miner-side errors: each maps to the HTTP status the bittensor 9.x axon uses for the case."""

from __future__ import annotations

from streetcascade.errors import BadInput, ImageTooLarge, Overloaded, StreetcascadeError


class NotVerified(StreetcascadeError):
    """Signature, nonce or addressed hotkey does not check out (axon: NotVerifiedException)."""

    exit_code = 11
    http_status = 401


class Blacklisted(StreetcascadeError):
    """Caller refused before any work: unknown hotkey, no validator permit, low stake."""

    exit_code = 12
    http_status = 403

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason  # a short metric label: "unknown", "no_permit", "low_stake"


class UnknownSynapse(StreetcascadeError):
    """The route names no synapse we serve."""

    exit_code = 3
    http_status = 404


class BodyTooLarge(ImageTooLarge):
    """Request body over the configured limit (413)."""


class BadBody(BadInput):
    """The JSON body has the wrong shape or types (422)."""

    http_status = 422


class RateLimited(Overloaded):
    """This caller sent more than its share (429)."""

    http_status = 429


class WalletError(StreetcascadeError):
    """A hotkey could not be loaded from its wallet or keyfile."""

    exit_code = 13
