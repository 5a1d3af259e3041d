"""The promotion gate: does the challenger replace the champion?"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None
    improvement: float | None


def decide(challenger: float, champion: float | None, *, margin: float, higher_is_better: bool) -> PromotionDecision:
    """Promote when there is no champion, or when the challenger is at least ``margin`` better on
    the same holdout. A tie goes to the challenger: it learned from newer data, and on a drifting
    series the fresher of two equally good models is the better bet. On Elec2, where a 3-day
    holdout's accuracy moves in steps of 1/144, ties are common: giving them to the challenger took
    the bundled policy's replay from 0.7759 to 0.7794 accuracy (README, replay results). A
    challenger whose score is not a number never wins: a broken metric must not dethrone a working
    model."""
    if math.isnan(challenger):
        return PromotionDecision(False, "challenger score is not a number", challenger, champion, None)
    if champion is None or math.isnan(champion):
        return PromotionDecision(True, "no champion yet", challenger, champion, None)
    improvement = challenger - champion if higher_is_better else champion - challenger
    if improvement >= margin - 1e-12:  # exactly-at-the-margin must not lose through float rounding
        return PromotionDecision(True, f"better by {improvement:.4f} (>= margin {margin})", challenger, champion, improvement)
    return PromotionDecision(
        False, f"improvement {improvement:.4f} is below the margin {margin}", challenger, champion, improvement
    )
