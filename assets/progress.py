import time


class ProgressLog:
    """Turns progress(done, total) callbacks into a log line every few seconds (and at the end)."""

    def __init__(self, context, what: str, every_s: float = 5.0):
        self.context, self.what, self.every_s = context, what, every_s
        self._last = 0.0

    def __call__(self, *args) -> None:
        stage, done, total = args if len(args) == 3 else (self.what, *args)
        now = time.monotonic()
        if done >= total or now - self._last >= self.every_s:
            self._last = now
            self.context.log.info("%s: %d/%d (%.0f%%)", stage, done, total, 100 * done / max(total, 1))
