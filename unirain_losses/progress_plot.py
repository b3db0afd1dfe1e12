"""Per-type validation PSNR and strategy weights over a run: ``progress.json`` and ``progress.png``.

Written into the experiment folder at every validation so a person can watch a run without tensorboard.
On resume the history is reloaded and cut at the resumed iteration, so the plot continues seamlessly.
"""
import json
import os

import matplotlib

matplotlib.use('Agg')  # files only; training machines have no display
import matplotlib.pyplot as plt  # noqa: E402


class ProgressPlot:

    def __init__(self, folder, resume_iter=None):
        self.json_path = os.path.join(folder, 'progress.json')
        self.png_path = os.path.join(folder, 'progress.png')
        self.records = []
        if resume_iter is not None and os.path.isfile(self.json_path):
            with open(self.json_path) as f:
                self.records = [r for r in json.load(f) if r['iter'] <= resume_iter]

    def add(self, current_iter, metric, per_type, per_type_input, weights):
        """per_type / per_type_input: {type or 'avg': value}; weights: {type: w} (may be empty)."""
        self.records = [r for r in self.records if r['iter'] != current_iter]
        self.records.append({'iter': int(current_iter), 'metric': metric, 'output': per_type,
                             'input': per_type_input, 'weights': weights})
        self.save()

    def save(self):
        tmp = self.json_path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(self.records, f, indent=1)
        os.replace(tmp, self.json_path)
        self._plot()

    def _plot(self):
        iters = [r['iter'] for r in self.records]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
        names = [n for n in self.records[-1]['output'] if n != 'avg'] + ['avg']
        colors = {name: f'C{i}' for i, name in enumerate(names)}
        for name in names:
            top.plot(iters, [r['output'].get(name) for r in self.records], color=colors[name],
                     lw=2.5 if name == 'avg' else 1.5, label=f'{name} output')
            inputs = [r['input'].get(name) for r in self.records]
            if any(v is not None for v in inputs):
                top.plot(iters, inputs, color=colors[name], ls=':', lw=1)
        metric = self.records[-1]['metric']
        top.set_ylabel(f'validation {metric} (dotted: rainy input)')
        top.legend(fontsize=8, ncol=3)
        top.grid(alpha=0.3)
        weight_names = list(self.records[-1]['weights'])
        for name in weight_names:
            bottom.plot(iters, [r['weights'].get(name) for r in self.records], color=colors.get(name), label=name)
        bottom.set_ylabel('loss weight per type')
        bottom.set_xlabel('iteration')
        if weight_names:
            bottom.legend(fontsize=8, ncol=4)
        bottom.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.png_path, dpi=90)
        plt.close(fig)
