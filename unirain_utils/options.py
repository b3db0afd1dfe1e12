"""Option files are data, never code, and small: BasicSR's YAML loader with PyYAML's safe loader underneath, bounded.

Aliases let a 2 KB file describe 10^8 values. PyYAML shares an aliased value instead of copying it, so loading
is cheap, but anything that walks the options (basicsr's log of them, a deep copy, an error message) expands
them. The loader therefore counts the nodes the document holds with every alias expanded and refuses it beyond
``MAX_NODES``, naming the line of the alias that crosses the limit; an alias inside its own anchor (a structure
that contains itself) is refused too. ``load_options`` also refuses what is not a readable UTF-8 file of at most
``MAX_BYTES``, with one line naming the file.
"""
import collections
import os

import yaml

MAX_NODES = 100_000  # the largest option file in options/ has under 500
MAX_BYTES = 1 << 20


class OptionError(ValueError):
    """An option file or option value that cannot be used; the message names the file (and line) or the key."""


class OptionLoader(yaml.SafeLoader):
    """PyYAML's safe loader with ordered mappings and a bound on alias expansion."""

    def __init__(self, stream):
        super().__init__(stream)
        self._expanded = 0
        self._sizes = {}  # id(node) -> node count of its expanded tree
        self._open_anchors = []  # anchors of the nodes being composed (outermost first)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise yaml.composer.ComposerError(
                    None, None, f'alias *{event.anchor} points into its own anchor, a structure that contains '
                    'itself; options must be a finite tree', event.start_mark)
            node = super().compose_node(parent, index)
            self._count(self._expanded_size(node), event)
            return node
        self._count(1, event)
        self._open_anchors.append(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.pop()

    def _count(self, nodes, event):
        self._expanded += nodes
        if self._expanded > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f'with its aliases expanded the document exceeds {MAX_NODES} values here (an alias '
                'bomb?); refused', event.start_mark)

    def _expanded_size(self, node):
        """Nodes of ``node``'s tree with aliases expanded; memoised, so shared subtrees cost one visit."""
        size = self._sizes.get(id(node))
        if size is None:
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._expanded_size(child) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._expanded_size(k) + self._expanded_size(v) for k, v in node.value)
            else:
                size = 1
            self._sizes[id(node)] = size
        return size


def _construct_ordered(loader, node):
    loader.flatten_mapping(node)
    return collections.OrderedDict(loader.construct_pairs(node))


def _refuse_python_tag(loader, tag_suffix, node):
    raise yaml.constructor.ConstructorError(
        None, None, f'option files are data: the tag "tag:yaml.org,2002:python/{tag_suffix}" would run Python '
        'code and is refused; write the value as plain YAML', node.start_mark)


OptionLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_ordered)
OptionLoader.add_multi_constructor('tag:yaml.org,2002:python/', _refuse_python_tag)


class _OrderedDumper(yaml.SafeDumper):
    pass


_OrderedDumper.add_representer(
    collections.OrderedDict, lambda dumper, data: dumper.represent_dict(data.items()))


def ordered_yaml():
    """Drop-in for ``basicsr.utils.options.ordered_yaml`` returning (safe loader, dumper)."""
    return OptionLoader, _OrderedDumper


def read_option_text(path):
    """The text of an option file: a regular file, at most MAX_BYTES, UTF-8; else OptionError naming it."""
    if not os.path.exists(path):
        raise OptionError(f'{path}: no such option file')
    if os.path.isdir(path):
        raise OptionError(f'{path}: is a folder, not an option file')
    if not os.path.isfile(path):  # a FIFO or a device would block or never end
        raise OptionError(f'{path}: not a regular file')
    try:
        with open(path, 'rb') as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise OptionError(f'{path}: cannot read it ({exc.strerror or exc})') from exc
    if len(data) > MAX_BYTES:
        raise OptionError(f'{path}: larger than {MAX_BYTES} bytes, too large for an option file')
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as exc:
        line = data.count(b'\n', 0, exc.start) + 1
        raise OptionError(f'{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); '
                          'save the file as UTF-8') from None


def load_options_text(text, origin):
    """Parse option text with OptionLoader; OptionError names ``origin`` and the line on any problem."""
    try:
        return yaml.load(text, Loader=OptionLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f'{origin}:{mark.line + 1}:{mark.column + 1}' if mark else origin
        syntax = isinstance(exc, (yaml.scanner.ScannerError, yaml.parser.ParserError))
        problem = ' '.join(str(exc.problem or exc.context).split())
        if exc.problem and exc.context and exc.context_mark:  # e.g. "while parsing a flow sequence" begun earlier
            problem += f' ({exc.context} begun on line {exc.context_mark.line + 1})'
        raise OptionError(f'{where}: {"not valid YAML: " if syntax else ""}{problem}') from None
    except yaml.YAMLError as exc:  # the reader: a control character or similar, given by offset
        raise OptionError(f'{origin}: not valid YAML: {" ".join(str(exc).split())}') from None
    except RecursionError:
        raise OptionError(f'{origin}: nested too deeply to be an option file') from None


def load_options(path):
    """Read an option file safely (for tools that read basicsr option files themselves)."""
    return load_options_text(read_option_text(path), path)
