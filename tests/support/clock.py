"""The wall clock as terminals stamp their taps."""

import time


def now_ms() -> int:
    return int(time.time() * 1000)
