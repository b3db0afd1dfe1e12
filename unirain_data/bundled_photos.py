"""Clean natural photos that ship inside scikit-image (a basicsr dependency): training data with no download.

Only files inside the installed package are used; ``skimage.data``'s other images are fetched from the
internet on first use and would fail offline.
"""
import os

# name -> file in skimage/data; natural RGB photos only (no microscopy, text or synthetic patterns)
BUNDLED_PHOTOS = {
    'astronaut': 'astronaut.png',
    'chelsea': 'chelsea.png',
    'coffee': 'coffee.png',
    'rocket': 'rocket.jpg',
    'motorcycle_left': 'motorcycle_left.png',
    'motorcycle_right': 'motorcycle_right.png',
}


def bundled_photo_path(name):
    """Path of a bundled photo; a clear error for an unknown name or an installation without it."""
    if name not in BUNDLED_PHOTOS:
        raise ValueError(f'unknown bundled photo {name!r}; choose from {", ".join(BUNDLED_PHOTOS)}')
    import skimage.data
    path = os.path.join(os.path.dirname(skimage.data.__file__), BUNDLED_PHOTOS[name])
    if not os.path.isfile(path):
        raise FileNotFoundError(f'bundled photo {name!r} is not in this scikit-image installation ({path})')
    return path
