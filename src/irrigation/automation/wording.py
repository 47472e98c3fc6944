"""How a grower reads a duration: ages and limits in the decisions' sentences."""

import math


def seconds_words(seconds: float) -> str:
    """'45 s', '15 min', '2 h 1 min 5 s': an age or a limit as a grower reads it. Rounded up
    to the second, so an age past its limit never reads as the limit itself."""
    hours, rest = divmod(math.ceil(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {unit}" for n, unit in ((hours, "h"), (minutes, "min"), (secs, "s")) if n]
    return " ".join(parts) or "0 s"
