"""Preload this module last in a multiprocessing fork server
(``ctx.set_forkserver_preload([..., "avf_data.fork_server"])``): the server then exits at once
when the process that started it is gone, instead of running Python's shutdown with torch and
the other preloaded libraries loaded (seconds on a loaded machine; see
:func:`avf_data.lifetime.fork_server_exits_fast`). Imported anywhere else, it does nothing."""

from .lifetime import fork_server_exits_fast

fork_server_exits_fast()
