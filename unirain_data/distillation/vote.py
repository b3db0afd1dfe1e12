"""Majority vote of the judges: a candidate is kept when at least ``min_yes`` judges answer yes.

Abstentions (unparseable answers) never count as yes; they are reported. The score is the fraction of yes
among the judges that did answer (None when every judge abstained). The paper keeps a candidate when 2 of
its 3 judges say yes; ``default_min_yes`` gives that strict majority for any number of judges.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

from unirain_data.distillation.prompt import NO, YES


@dataclass(frozen=True)
class Vote:
    yes: int
    no: int
    abstain: int
    verdict: str  # 'kept' | 'rejected'
    score: Optional[float]


def default_min_yes(num_judges):
    """Strict majority: 2 of 3, 2 of 2, 1 of 1, 3 of 4."""
    return num_judges // 2 + 1


def check_min_yes(min_yes, num_judges):
    if isinstance(min_yes, bool) or not isinstance(min_yes, int) or not 1 <= min_yes <= num_judges:
        raise ValueError(f'vote.min_yes must be an integer from 1 to the number of judges ({num_judges}), '
                         f'got {min_yes!r}')


def majority_vote(answers: Sequence[Optional[str]], min_yes: int) -> Vote:
    """``answers``: one parsed answer per judge ('yes', 'no' or None)."""
    check_min_yes(min_yes, len(answers))
    unknown = [a for a in answers if a not in (YES, NO, None)]
    if unknown:
        raise ValueError(f'answers must be {YES!r}, {NO!r} or None, got {unknown[0]!r}')
    yes = sum(a == YES for a in answers)
    no = sum(a == NO for a in answers)
    answered = yes + no
    return Vote(yes=yes, no=no, abstain=len(answers) - answered, verdict='kept' if yes >= min_yes else 'rejected',
                score=yes / answered if answered else None)
