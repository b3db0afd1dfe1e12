"""The yes/no question put to every judge, and how its free-text answer is read.

Assembly: every judge is shown the K3 reference images first (real photographs, most similar first), then
the candidate, then the prompt text. The prompt is a template; these fields are filled in per candidate:

    {num_references}  number of reference images shown (K3, fewer when the database is smaller)
    {rain_type}       the candidate's rain type in words ('daytime rain streaks', ...)
    {rain_code}       the candidate's rain type code ('DRS', 'DRD', 'NRS', 'NRD')

Parsing (``parse_answer``): the answer's first word decides, after dropping surrounding whitespace, quotes,
brackets and markdown emphasis and an optional 'Answer:' prefix; case is ignored. 'yes' -> yes, 'no' -> no;
anything else ('Maybe', 'The rain...', 'yesyes', an empty answer) is an abstention.
"""
import re
import string
from typing import Optional

from unirain_utils.rain_types import DESCRIPTIONS

DEFAULT_PROMPT = (
    'The first {num_references} images are real photographs of {rain_type}. The last image is a candidate that '
    'may have been made synthetically. Compare the rain in the candidate with the rain in the real photographs: '
    'the shape, size, density, direction, transparency and blur of the streaks or drops, and how they catch the '
    'light of the scene. Does the rain in the candidate look as real as the rain in the photographs? '
    'Answer with one word: yes or no.')
FIELDS = ('num_references', 'rain_type', 'rain_code')

YES, NO = 'yes', 'no'
_WRAPPERS = ' \t\r\n"\'`*_([{<'
_PREFIX = re.compile(r'(?:final\s+)?(?:answer|response)\s*[:\-]\s*')
_FIRST_WORD = re.compile(r'[a-z]+')


class PromptError(ValueError):
    """A prompt template that cannot be filled in; the message names the field."""


def template_fields(template):
    """Names of the ``{fields}`` a template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_template(template, num_references):
    """Raise PromptError for an unknown field, or for a prompt about references when none are shown."""
    if not isinstance(template, str) or not template.strip():
        raise PromptError(f'prompt must be non-empty text, got {template!r}')
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise PromptError(f'prompt is not a valid template ({exc}); write literal braces as {{{{ and }}}}') from exc
    unknown = sorted(fields - set(FIELDS))
    if unknown:
        raise PromptError(f'prompt uses unknown field(s) {", ".join("{" + f + "}" for f in unknown)}; '
                          f'known: {", ".join("{" + f + "}" for f in FIELDS)}')
    if num_references == 0 and 'num_references' in fields:
        raise PromptError('retrieval.k3 is 0 (the judges see the candidate alone) but the prompt refers to '
                          '{num_references}: write a prompt about the candidate alone')


def build_prompt(template, num_references, rain_code):
    """The prompt text for one candidate."""
    code = str(rain_code).upper()
    return template.format(num_references=num_references, rain_type=DESCRIPTIONS[code], rain_code=code)


def parse_answer(text) -> Optional[str]:
    """'yes', 'no', or None for an abstention (see the module docstring for the rules)."""
    if not isinstance(text, str):
        return None
    rest = text.strip().lower().lstrip(_WRAPPERS)
    prefix = _PREFIX.match(rest)
    if prefix:
        rest = rest[prefix.end():].lstrip(_WRAPPERS)
    word = _FIRST_WORD.match(rest)
    if word and word.group(0) in (YES, NO):
        return word.group(0)
    return None
