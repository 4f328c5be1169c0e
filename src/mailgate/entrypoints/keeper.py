"""The token keeper: a background thread that runs the OAuth2 keeper's round
(``services/oauth2/keeper.py``) every few minutes. Every process may run one."""

from __future__ import annotations

import logging
import threading

from mailgate.services.oauth2.keeper import OAuth2Keeper

log = logging.getLogger("mailgate.keeper")


class TokenKeeper:
    def __init__(self, service: OAuth2Keeper, interval_s: float = 300.0) -> None:
        self.service = service
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="token-keeper", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                refreshed = self.service.run_once()
                if refreshed:
                    log.info("token keeper: refreshed %d configuration(s)", refreshed)
            except Exception as exc:  # one bad round must not end the keeper
                log.warning("token keeper round failed: %s", type(exc).__name__)
            self._stop.wait(self.interval_s)
