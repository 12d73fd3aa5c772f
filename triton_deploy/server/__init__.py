"""Run the real ``tritonserver`` that the nvidia-pytriton wheel ships, on a model repository.

``install`` locates the binary and stages its backend directory; ``options`` holds ``ServerOptions``, their policy
and the command line; ``process`` is ``TritonServer`` (start, health, stop); ``supervisor`` restarts Triton when it
crashes or a python-backend stub dies and reaps what a dead server leaves (stubs, shared memory); ``serve`` is the
one function behind the ``serve`` command (start, state file, supervision, foreground or background);
``background`` reads the state file and stops the server it records; ``cli`` holds the ``serve`` and ``stop``
subcommands.
"""

from triton_deploy.contract import ADMIN_HEADER

from .background import DEFAULT_STATE_FILE, stop_background
from .install import HTTP_MAX_INPUT_SIZE_FLAG, ServerInstallation
from .options import RESTRICTED_APIS, ServerOptions, effective_http_max_input_size, is_loopback, server_command
from .process import TritonServer, free_ports, port_is_free
from .serve import ServeOptions, serve
from .supervisor import SHM_REGION_PREFIX, STUB_BINARY, Restarts, SupervisionPolicy, supervise

__all__ = [
    "ADMIN_HEADER", "DEFAULT_STATE_FILE", "HTTP_MAX_INPUT_SIZE_FLAG", "RESTRICTED_APIS", "SHM_REGION_PREFIX",
    "STUB_BINARY", "Restarts", "ServeOptions", "ServerInstallation", "ServerOptions", "SupervisionPolicy",
    "TritonServer", "effective_http_max_input_size", "free_ports", "is_loopback", "port_is_free", "serve",
    "server_command", "stop_background", "supervise",
]
