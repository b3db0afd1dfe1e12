"""The ``basicsr`` command: BasicSR's own train/test pipelines, with plugins loaded and the CWD as root.

    basicsr train -opt FILE [--launcher none|pytorch|slurm] [--auto_resume] [--debug] [--force_yml ...]
    basicsr test  -opt FILE [...]
    basicsr list  [--registry arch|model|dataset|loss|metric]

Plugins are packages that declare an entry point in the group ``basicsr.plugins``; each is imported
(which registers its archs, models, datasets, losses and metrics) before the pipeline runs.

Exit status: 0 done; 1 a plugin failed to import, or the run failed; 2 a usage error, reported in one line: an
option file that cannot be read, a checkpoint or training state that cannot be used, or a run folder in use.
"""
import os
import sys

PLUGIN_GROUP = 'basicsr.plugins'
REGISTRIES = ('arch', 'model', 'dataset', 'loss', 'metric')

USAGE = """usage: basicsr {train,test,list} ...

BasicSR's pipelines with every installed `basicsr.plugins` package registered.

commands:
  train -opt FILE [--launcher {none,pytorch,slurm}] [--auto_resume] [--debug] [--force_yml K=V ...]
                  train with basicsr.train; experiments/ and tb_logger/ go into the current directory
  test -opt FILE [--launcher ...] [--force_yml K=V ...]
                  test with basicsr.test; results/ goes into the current directory
  list [--registry {arch,model,dataset,loss,metric}]
                  every registered name, as `<registry>: <Name>`

`basicsr train --help` shows BasicSR's own flags.
Multi-GPU / multi-process: torchrun --nproc_per_node=N $(which basicsr) train -opt FILE --launcher pytorch
Exit status: 0 done, 1 failed, 2 usage error (option file, checkpoint, training state, run folder in use).
"""


class PluginError(RuntimeError):
    pass


def load_plugins():
    """Import every ``basicsr.plugins`` entry point; a plugin that fails is reported by name, not swallowed."""
    from importlib.metadata import entry_points

    from unirain_utils import compat
    compat.apply()
    loaded = []
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            ep.load()
        except Exception as exc:  # any import-time failure of a third-party plugin
            raise PluginError(f'basicsr plugin {ep.name!r} ({ep.value}) failed to import: '
                              f'{type(exc).__name__}: {exc}') from exc
        loaded.append(ep.name)
    return loaded


def registered_names():
    """{registry: sorted names} for BasicSR's five registries, after loading plugins."""
    load_plugins()
    from basicsr.utils import registry
    return {name: sorted(getattr(registry, f'{name.upper()}_REGISTRY').keys()) for name in REGISTRIES}


def _list(argv):
    import argparse
    parser = argparse.ArgumentParser(prog='basicsr list', description='List registered names.')
    parser.add_argument('--registry', choices=REGISTRIES, help='only this registry')
    args = parser.parse_args(argv)
    for name, keys in registered_names().items():
        if args.registry in (None, name):
            for key in keys:
                print(f'{name}: {key}')
    return 0


def check_option_file(argv):
    """Read the ``-opt`` file as basicsr will, before the plugins load: a file that cannot be used is a one-line
    OptionError. Without ``-opt`` basicsr's own parser reports the usage error."""
    import argparse

    from unirain_utils.options import OptionError, load_options
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt')
    path = parser.parse_known_args(argv)[0].opt
    if path is None:
        return
    opt = load_options(path)
    if not isinstance(opt, dict):
        raise OptionError(f'{path}: the options must be a mapping of keys to values, got '
                          f'{"an empty file" if opt is None else type(opt).__name__}')


def _pipeline(command, argv):
    from unirain_utils import run_lock
    check_option_file(argv)
    load_plugins()
    # basicsr parses sys.argv itself: hand it exactly its own flags
    sys.argv = [f'basicsr {command}'] + argv
    root = os.getcwd()
    try:
        if command == 'train':
            from basicsr.train import train_pipeline
            train_pipeline(root)
        else:
            from basicsr.test import test_pipeline
            test_pipeline(root)
    finally:
        run_lock.release()
    return 0


def _is_usage_error(exc):
    """Whether ``exc`` is the user's to fix (reported in one line, exit status 2)."""
    from unirain_utils.options import OptionError
    if isinstance(exc, OptionError):  # before torch is imported: keep that answer quick
        return True
    from unirain_utils.checkpoints import CheckpointError
    from unirain_utils.resume import ResumeStateError
    from unirain_utils.run_lock import RunLockedError
    return isinstance(exc, (CheckpointError, ResumeStateError, RunLockedError))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(USAGE, end='')
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command in ('train', 'test'):
            return _pipeline(command, rest)
        if command == 'list':
            return _list(rest)
    except PluginError as exc:
        print(f'basicsr: error: {exc}', file=sys.stderr)
        return 1
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        print(f'basicsr: error: {exc}', file=sys.stderr)
        return 2
    print(f"basicsr: error: unknown command {command!r}; choose from 'train', 'test', 'list'\n", file=sys.stderr)
    print(USAGE, end='', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
