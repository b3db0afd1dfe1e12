"""Per-rain-type validation bookkeeping: metric values of outputs and rainy inputs, grouped by type.

A validation round spans every validation dataset; a dataset declares its type (``rain_type`` option) or its
samples carry ``type_id``. At the end of the round the per-type means and their average over types (each type
weighs the same, whatever its number of images) are what UniRainModel logs and plots.
"""
from collections import OrderedDict

import numpy as np


def declared_type(dataset_opt, type_names):
    """Type id a validation dataset declares with ``rain_type: <name>``, or None (its samples must carry ids)."""
    value = dataset_opt.get('rain_type')
    if value is None:
        return None
    names = [n.lower() for n in type_names]
    if str(value).lower() not in names:
        raise ValueError(f'dataset {dataset_opt.get("name")!r}: rain_type {value!r} is not one of {", ".join(names)}')
    return names.index(str(value).lower())


def sample_type(sample, dataset_opt, type_names):
    """Type id of one validation sample: its ``type_id``, else the dataset's ``rain_type``; None if neither."""
    if 'type_id' in sample:
        return int(np.asarray(sample['type_id']).reshape(-1)[0])
    return declared_type(dataset_opt, type_names)


class TypeMetrics:
    """Collects one validation round's metric values per type; inputs' values are cached per dataset."""

    def __init__(self, type_names):
        self.type_names = list(type_names)
        self.input_cache = {}  # dataset name -> [{metric: value} per image]: rainy inputs never change
        self.reset()

    def reset(self):
        self.outputs = {}
        self.inputs = {}

    def add(self, type_id_, output_values, input_values=None):
        """Values ({metric: value}) of one image's output and, if known, of its rainy input."""
        for store, values in ((self.outputs, output_values), (self.inputs, input_values or {})):
            for metric, value in values.items():
                store.setdefault(type_id_, {}).setdefault(metric, []).append(float(value))

    def means(self, metric, inputs=False):
        """{type name: mean, ..., 'avg': mean over types} of the round; {} when no type has the metric."""
        store = self.inputs if inputs else self.outputs
        per_type = OrderedDict((self.type_names[t], float(np.mean(v[metric])))
                               for t, v in sorted(store.items()) if metric in v)
        if per_type:
            per_type['avg'] = float(np.mean(list(per_type.values())))
        return per_type

    @staticmethod
    def line(metric, per_type):
        return '  '.join(f'm_{metric}_{name}: {value:.4f}' for name, value in per_type.items())
