"""The four rain types UniRain handles, their ids and names (one source of truth)."""

RAIN_TYPES = ('DRS', 'DRD', 'NRS', 'NRD')
TYPE_IDS = {name: i for i, name in enumerate(RAIN_TYPES)}
DESCRIPTIONS = {
    'DRS': 'daytime rain streaks',
    'DRD': 'daytime raindrops',
    'NRS': 'nighttime rain streaks',
    'NRD': 'nighttime raindrops',
}


def type_id(name):
    """Id of a rain type given in any case ('drs', 'DRS'); a clear error for anything else."""
    key = str(name).upper()
    if key not in TYPE_IDS:
        raise ValueError(f'unknown rain type {name!r}; expected one of {", ".join(RAIN_TYPES)} (any case)')
    return TYPE_IDS[key]


def type_name(type_id_):
    """Upper-case name of a type id (0..3)."""
    if not 0 <= int(type_id_) < len(RAIN_TYPES):
        raise ValueError(f'unknown rain type id {type_id_!r}; expected 0..{len(RAIN_TYPES) - 1}')
    return RAIN_TYPES[int(type_id_)]
