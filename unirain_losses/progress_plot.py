"""Per-type validation PSNR and strategy weights over a run: ``progress.json`` and ``progress.png``.

Written into the experiment folder at every validation so a person can watch a run without tensorboard.
Weights are also recorded at every reweighting update (CoBa updates far more often than full validations run)
and drawn at that resolution. What was added since the last write is also written with every checkpoint
(``save_changes``), so a run killed and resumed from that checkpoint finds its history up to it; on resume the
history is reloaded and cut at the resumed iteration, so the plot continues seamlessly.
"""
import json
import os

import matplotlib

matplotlib.use('Agg')  # files only; training machines have no display
import matplotlib.pyplot as plt  # noqa: E402

from unirain_utils.files import atomic_write  # noqa: E402


class ProgressPlot:

    def __init__(self, folder, resume_iter=None):
        self.json_path = os.path.join(folder, 'progress.json')
        self.png_path = os.path.join(folder, 'progress.png')
        self.records = []
        self.weight_history = []
        self.unsaved = False
        if resume_iter is not None and os.path.isfile(self.json_path):
            with open(self.json_path) as f:
                saved = json.load(f)
            self.records = [r for r in saved['validations'] if r['iter'] <= resume_iter]
            self.weight_history = [r for r in saved['weights'] if r['iter'] <= resume_iter]

    def add_weights(self, current_iter, weights):
        """Weights after a reweighting update ({type: w}); drawn at the next validation."""
        self.weight_history = [r for r in self.weight_history if r['iter'] != current_iter]
        self.weight_history.append({'iter': int(current_iter), 'weights': dict(weights)})
        self.unsaved = True

    def add(self, current_iter, metric, per_type, per_type_input, weights):
        """per_type / per_type_input: {type or 'avg': value}; weights: {type: w} (may be empty)."""
        self.records = [r for r in self.records if r['iter'] != current_iter]
        self.records.append({'iter': int(current_iter), 'metric': metric, 'output': per_type,
                             'input': per_type_input, 'weights': weights})
        self.save()

    def save(self):
        """Write progress.json, and progress.png once there is something to draw."""
        atomic_write(self.json_path, json.dumps({'validations': self.records, 'weights': self.weight_history},
                                                indent=1))
        self.unsaved = False
        if self.records or self.weight_history:
            self._plot()

    def save_changes(self):
        """Save if anything was added since the last save (weights between validations)."""
        if self.unsaved:
            self.save()

    def _plot(self):
        iters = [r['iter'] for r in self.records]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
        names = [n for n in self.records[-1]['output'] if n != 'avg'] + ['avg'] if self.records else []
        colors = {name: f'C{i}' for i, name in enumerate(names)}
        for name in names:
            top.plot(iters, [r['output'].get(name) for r in self.records], color=colors[name],
                     lw=2.5 if name == 'avg' else 1.5, label=f'{name} output')
            inputs = [r['input'].get(name) for r in self.records]
            if any(v is not None for v in inputs):
                top.plot(iters, inputs, color=colors[name], ls=':', lw=1)
        if self.records:
            top.set_ylabel(f'validation {self.records[-1]["metric"]} (dotted: rainy input)')
            top.legend(fontsize=8, ncol=3)
        else:
            top.set_ylabel('validation (none yet)')
        top.grid(alpha=0.3)
        history = self.weight_history or [{'iter': r['iter'], 'weights': r['weights']} for r in self.records]
        weight_names = list(history[-1]['weights'])
        for name in weight_names:
            bottom.plot([r['iter'] for r in history], [r['weights'].get(name) for r in history],
                        color=colors.get(name), label=name)
        bottom.set_ylabel('loss weight per type')
        bottom.set_xlabel('iteration')
        if weight_names:
            bottom.legend(fontsize=8, ncol=4)
        bottom.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.png_path, dpi=90)
        plt.close(fig)
