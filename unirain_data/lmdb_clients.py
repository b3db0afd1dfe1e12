"""One BasicSR FileClient per LMDB and process, shared by every dataset reading that LMDB.

py-lmdb refuses to open an environment that is already open in the process, and a forked process inherits
its parent's open environments together with that refusal. Without sharing, a validation set and a training
set cut from one LMDB (``splits: [val]`` / ``splits: [train]`` of one key manifest) could not both be read,
and DataLoader workers forked after a validation could not open the LMDB the main process had read. So each
LMDB is opened once per process, and a forked child closes what it inherited before opening its own.
"""
import os

from basicsr.utils import FileClient

_CLIENT_KEY = 'default'
_clients = {}  # realpath -> FileClient('lmdb') of this process


def lmdb_client(db_path, **options):
    """The FileClient of one LMDB (read with client key 'default'); ``options`` go to lmdb.open on first use."""
    path = os.path.realpath(db_path)
    client = _clients.get(path)
    if client is None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f'io_backend.db_paths: LMDB not found: {db_path}')
        client = _clients[path] = FileClient('lmdb', db_paths=[path], client_keys=[_CLIENT_KEY], **options)
    return client


def read(db_path, key, **options):
    """Bytes stored under ``key``, or None when the key is absent."""
    return lmdb_client(db_path, **options).get(key, _CLIENT_KEY)


def missing_keys(db_path, keys, **options):
    """The keys of ``keys`` absent from the LMDB (a non-ASCII key counts as absent: basicsr encodes keys as ASCII)."""
    env = lmdb_client(db_path, **options).client._client[_CLIENT_KEY]
    missing = []
    with env.begin() as txn, txn.cursor() as cursor:
        for key in keys:
            try:
                present = cursor.set_key(key.encode('ascii'))
            except UnicodeEncodeError:
                present = False
            if not present:
                missing.append(key)
    return missing


def _close_inherited():
    for client in _clients.values():
        for env in client.client._client.values():
            env.close()
    _clients.clear()


if hasattr(os, 'register_at_fork'):  # POSIX; elsewhere workers are spawned and inherit nothing
    os.register_at_fork(after_in_child=_close_inherited)
