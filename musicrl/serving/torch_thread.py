"""One dedicated thread for all torch work of a server process.

OpenMP keeps a team of worker threads per calling thread. When a model is loaded on one thread and run
on another, the first team lingers and competes for the cores: on a 2-core machine, a 42M-parameter
MusicGen generated 1 s of audio in about 2.0 s from a second thread against 1.3-1.5 s on the loading
thread. Loading and inference therefore share this single thread; it also keeps torch off the event loop.
"""

import concurrent.futures
import functools

from musicrl.serving.cpus import torch_threads


@functools.cache
def torch_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide single-thread executor that runs every torch call of a server."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")


def configure_torch_threads(requested: int = 0) -> int:
    """Size torch's intra-op pool on the torch thread (see :func:`musicrl.serving.cpus.torch_threads`).

    Returns:
        The thread count torch now uses.
    """

    def configure() -> int:
        import torch

        count = torch_threads(requested)
        if count is not None:
            torch.set_num_threads(count)
        return torch.get_num_threads()

    return torch_executor().submit(configure).result()
