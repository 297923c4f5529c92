"""The dashboard's Textual driver under ``hhcl monitor --web``: textual's WebDriver, except that the dashboard
exits when its input from the server ends.

textual-serve talks to each dashboard process over its stdin and stdout. Textual's WebDriver stops reading
when stdin reaches end of file but leaves the app running, so a dashboard whose server went away (killed,
crashed) kept redrawing into a closed pipe for good. This driver asks the app to exit instead.
"""

from __future__ import annotations

from textual import messages
from textual.drivers.web_driver import WebDriver


class SessionDriver(WebDriver):
    """WebDriver whose app exits when the server's end of stdin closes, so no dashboard outlives its server."""

    def run_input_thread(self) -> None:
        """Read the server's input as WebDriver does; if it ends before the app asked to stop, exit the app."""
        super().run_input_thread()
        if not self.exit_event.is_set():  # stdin closed under us: nobody can see or drive this dashboard now
            self._app.post_message(messages.ExitApp())
